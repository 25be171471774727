from .cli import main

# Guarded: worker processes are spawned, and spawning re-imports the main module of the parent.
if __name__ == "__main__":
    main()
