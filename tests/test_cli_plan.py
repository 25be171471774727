"""The run planner: which inputs, which outputs, and the skip / overwrite / refuse policy. No model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stablesr_cli.cli.plan import (
    Action,
    OutputRequest,
    expand_inputs,
    expand_suffix,
    output_extension,
    plan_jobs,
)
from stablesr_cli.errors import OptionError
from stablesr_cli.options import OutputFormat


def touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def plan(arguments, *, recursive=False, **request):
    return plan_jobs(expand_inputs([str(a) for a in arguments], recursive=recursive), OutputRequest(**request))


def destinations(jobs):
    return [job.destination for job in jobs]


# ----------------------------------------------------------------- inputs


def test_folder_scan_takes_images_only_in_natural_order_and_skips_hidden_files(tmp_path):
    for name in ["img10.png", "img2.JPG", "img1.webp", "notes.txt", ".img3.png.tmp", ".hidden.png", "scan.tif"]:
        touch(tmp_path / name)
    touch(tmp_path / "sub" / "deep.png")
    expansion = expand_inputs([str(tmp_path)], recursive=False)
    assert [s.path.name for s in expansion.sources] == ["img1.webp", "img2.JPG", "img10.png", "scan.tif"]
    assert not expansion.single


def test_recursive_scan_descends_but_not_into_hidden_folders(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "sub" / "b.png")
    touch(tmp_path / ".cache" / "c.png")
    names = [s.path.relative_to(tmp_path).as_posix() for s in expand_inputs([str(tmp_path)], recursive=True).sources]
    assert names == ["a.png", "sub/b.png"]


def test_explicit_file_is_kept_whatever_its_extension(tmp_path):
    notes = touch(tmp_path / "notes.txt")
    expansion = expand_inputs([str(notes)], recursive=False)
    assert [s.path for s in expansion.sources] == [notes]
    assert expansion.single


def test_glob_matches_images_and_reports_an_empty_pattern(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.jpg")
    touch(tmp_path / "c.txt")
    expansion = expand_inputs([str(tmp_path / "*"), str(tmp_path / "*.gif")], recursive=False)
    assert [s.path.name for s in expansion.sources] == ["a.png", "b.jpg"]
    assert [(m.argument.endswith("*.gif"), m.problem) for m in expansion.missing] == [
        (True, "no image matches this pattern")
    ]


def test_an_existing_name_with_glob_characters_is_taken_literally(tmp_path):
    literal = touch(tmp_path / "shot[1].png")
    touch(tmp_path / "shot1.png")
    assert [s.path for s in expand_inputs([str(literal)], recursive=False).sources] == [literal]


def test_missing_input_becomes_a_failed_job_naming_the_argument(tmp_path):
    jobs = plan([tmp_path / "nope.png"])
    assert [(j.action, j.label, j.reason) for j in jobs] == [
        (Action.FAIL, str(tmp_path / "nope.png"), "no such file or folder")
    ]


def test_the_same_file_named_twice_is_processed_once(tmp_path):
    a = touch(tmp_path / "a.png")
    expansion = expand_inputs([str(tmp_path), str(a), str(tmp_path / "." / "a.png")], recursive=False)
    assert len(expansion.sources) == 1


def test_stdin_cannot_be_mixed_with_files(tmp_path):
    with pytest.raises(OptionError, match="standard input"):
        expand_inputs(["-", str(touch(tmp_path / "a.png"))], recursive=False)


# ----------------------------------------------------------------- naming


@pytest.mark.parametrize(("template", "scale", "expected"), [("_x{scale}", 4.0, "_x4"), ("_x{scale}", 2.5, "_x2.5"), ("-up", 4, "-up"), ("", 2, "")])
def test_suffix_template(template, scale, expected):
    assert expand_suffix(template, scale) == expected


@pytest.mark.parametrize("template", ["_{size}", "_{0}", "_{scale"])
def test_bad_suffix_template_is_a_usage_error(template):
    with pytest.raises(OptionError, match="--suffix"):
        expand_suffix(template, 4)


@pytest.mark.parametrize(
    ("name", "requested", "expected"),
    [
        ("a.png", None, (".png", OutputFormat.PNG)),
        ("a.JPEG", None, (".JPEG", OutputFormat.JPG)),
        ("a.tif", None, (".tif", OutputFormat.TIFF)),
        ("a.bmp", None, (".bmp", OutputFormat.BMP)),
        ("a", None, (".png", OutputFormat.PNG)),
        ("a.gif", None, (".png", OutputFormat.PNG)),
        ("a.png", OutputFormat.JPG, (".jpg", OutputFormat.JPG)),
        ("a.jpeg", OutputFormat.JPG, (".jpeg", OutputFormat.JPG)),
        ("a.bmp", OutputFormat.WEBP, (".webp", OutputFormat.WEBP)),
    ],
)
def test_output_extension_follows_the_input_unless_a_format_is_asked(name, requested, expected):
    assert output_extension(Path(name), requested) == expected


def test_default_output_goes_next_to_the_input_with_the_scale_suffix(tmp_path):
    a = touch(tmp_path / "a.jpg")
    [job] = plan([a], scale=2.0)
    assert (job.destination, job.format, job.action) == (tmp_path / "a_x2.jpg", OutputFormat.JPG, Action.UPSCALE)


def test_output_file_for_one_input_takes_its_format_from_the_name(tmp_path):
    a = touch(tmp_path / "a.png")
    [job] = plan([a], output=str(tmp_path / "big.webp"))
    assert (job.destination, job.format) == (tmp_path / "big.webp", OutputFormat.WEBP)


def test_format_contradicting_the_output_name_is_a_usage_error(tmp_path):
    a = touch(tmp_path / "a.png")
    with pytest.raises(OptionError, match="does not match"):
        plan([a], output=str(tmp_path / "big.png"), format=OutputFormat.JPG)


def test_output_folder_keeps_names_and_the_tree_below_each_folder_argument(tmp_path):
    touch(tmp_path / "in" / "x.png")
    touch(tmp_path / "in" / "sub" / "x.png")
    out = tmp_path / "out"
    jobs = plan([tmp_path / "in"], recursive=True, output=str(out))
    assert destinations(jobs) == [out / "sub" / "x.png", out / "x.png"]
    assert all(j.action is Action.UPSCALE for j in jobs)


def test_a_folder_argument_means_an_output_folder_even_with_one_image(tmp_path):
    touch(tmp_path / "in" / "only.png")
    [job] = plan([tmp_path / "in"], output=str(tmp_path / "out"))
    assert job.destination == tmp_path / "out" / "only.png"


def test_explicit_suffix_applies_in_an_output_folder(tmp_path):
    a = touch(tmp_path / "a.png")
    b = touch(tmp_path / "b.png")
    jobs = plan([a, b], output=str(tmp_path / "out"), suffix="_big")
    assert destinations(jobs) == [tmp_path / "out" / "a_big.png", tmp_path / "out" / "b_big.png"]


def test_colliding_names_get_a_counter_deterministically(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "a.jpg")
    first = plan([tmp_path], format=OutputFormat.PNG)
    again = plan([tmp_path], format=OutputFormat.PNG)
    assert destinations(first) == [tmp_path / "a_x4.png", tmp_path / "a_x4_2.png"] == destinations(again)


def test_previous_outputs_in_a_scanned_folder_are_not_inputs_again(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "a_x4.png")
    touch(tmp_path / "orphan_x4.png")  # its source is gone: a real input now
    jobs = plan([tmp_path], skip_existing=True)
    assert [(j.label, j.action) for j in jobs] == [
        (str(tmp_path / "a.png"), Action.SKIP),
        (str(tmp_path / "orphan_x4.png"), Action.UPSCALE),
    ]


def test_an_output_folder_inside_the_input_tree_is_not_scanned(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "out" / "a.png")
    jobs = plan([tmp_path], recursive=True, output=str(tmp_path / "out"), skip_existing=True)
    assert [(j.label, j.action) for j in jobs] == [(str(tmp_path / "a.png"), Action.SKIP)]


def test_explicitly_named_previous_output_is_still_processed(tmp_path):
    touch(tmp_path / "a.png")
    a_x4 = touch(tmp_path / "a_x4.png")
    [job] = plan([a_x4])
    assert job.destination == tmp_path / "a_x4_x4.png"


# ----------------------------------------------------------------- policy


def test_existing_output_fails_by_default_and_says_how_to_proceed(tmp_path):
    a = touch(tmp_path / "a.png")
    touch(tmp_path / "a_x4.png")
    [job] = plan([a])
    assert job.action is Action.FAIL
    assert "--skip-existing" in job.reason and "--overwrite" in job.reason


def test_skip_existing_and_overwrite(tmp_path):
    a = touch(tmp_path / "a.png")
    touch(tmp_path / "a_x4.png")
    assert plan([a], skip_existing=True)[0].action is Action.SKIP
    assert plan([a], overwrite=True)[0].action is Action.UPSCALE


def test_skip_existing_with_overwrite_is_a_usage_error(tmp_path):
    with pytest.raises(OptionError, match="contradict"):
        plan([touch(tmp_path / "a.png")], skip_existing=True, overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_is_never_overwritten(tmp_path, overwrite):
    a = touch(tmp_path / "a.png")
    [job] = plan([a], output=str(a), overwrite=overwrite)
    assert job.action is Action.FAIL and "is an input" in job.reason


def test_an_input_reached_through_a_symlink_is_never_overwritten(tmp_path):
    a = touch(tmp_path / "a.png")
    (tmp_path / "link.png").symlink_to(a)
    [job] = plan([a], output=str(tmp_path / "link.png"), overwrite=True)
    assert job.action is Action.FAIL and "is an input" in job.reason


def test_output_folder_equal_to_input_folder_without_suffix_refuses_every_image(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.png")
    jobs = plan([tmp_path], output=str(tmp_path), overwrite=True)
    assert [j.action for j in jobs] == [Action.FAIL, Action.FAIL]


def test_output_under_a_regular_file_fails_before_any_work(tmp_path):
    a = touch(tmp_path / "a.png")
    blocker = touch(tmp_path / "blocker")
    [job] = plan([a, touch(tmp_path / "b.png")], output=str(blocker / "out"))[:1]
    assert job.action is Action.FAIL and "is a file" in job.reason


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder_fails_before_any_work(tmp_path):
    a = touch(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        [job] = plan([a], output=str(locked) + "/")
    finally:
        locked.chmod(0o700)
    assert job.action is Action.FAIL and "not writable" in job.reason


def test_stdout_takes_exactly_one_input(tmp_path):
    a = touch(tmp_path / "a.png")
    b = touch(tmp_path / "b.png")
    [job] = plan([a], output="-")
    assert (job.destination, job.format) == (None, OutputFormat.PNG)
    with pytest.raises(OptionError, match="exactly one"):
        plan([a, b], output="-")


def test_stdin_goes_to_stdout_by_default_with_the_input_format_left_open():
    [job] = plan(["-"])
    assert (job.source.is_stdin, job.destination, job.format, job.action) == (True, None, None, Action.UPSCALE)


file_names = st.lists(
    st.sampled_from(["a", "A", "b", "a_x4", "img1", "img01"]).flatmap(
        lambda stem: st.sampled_from([".png", ".jpg", ".PNG", ".bmp"]).map(lambda ext: stem + ext)
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(names=file_names, fmt=st.sampled_from([None, *OutputFormat]))
def test_destinations_are_unique_and_inside_the_output_folder(tmp_path_factory, names, fmt):
    folder = tmp_path_factory.mktemp("batch")
    for name in names:
        touch(folder / name)
    jobs = plan([folder / n for n in names], format=fmt, output=str(folder / "out") + "/")
    planned = [os.path.normcase(str(j.destination)).casefold() for j in jobs]
    assert len(set(planned)) == len(planned)
    assert all(j.destination.parent == folder / "out" for j in jobs)
    assert all(j.action is Action.UPSCALE for j in jobs)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(names=file_names, fmt=st.sampled_from([None, *OutputFormat]), suffix=st.sampled_from(["", "_x4", None]))
def test_no_planned_write_ever_lands_on_an_input(tmp_path_factory, names, fmt, suffix):
    folder = tmp_path_factory.mktemp("batch")
    for name in names:
        touch(folder / name)
    jobs = plan([folder], format=fmt, output=str(folder), suffix=suffix, overwrite=True)
    # a scanned a_x4.png beside a.png is last run's output, not an input: replacing it is the point
    inputs = {job.source.path.stat().st_ino for job in jobs}
    for job in jobs:
        if job.action is Action.UPSCALE and job.destination.exists():
            assert job.destination.stat().st_ino not in inputs
