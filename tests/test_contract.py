"""The contract every family of the registry (fresnel.registry) keeps, whatever its guide:
its options survive command line -> dict -> checkpoint -> options and every switch can be set
both ways; each rule runs the script named after it; each user error is one line through the
CLI; a tiny training run killed mid-way and rerun ends byte-identical to an uninterrupted one;
its doc page names every command it registers. A new family is held to it by declaring itself,
with no change here (tests/training/test_skeleton_family.py shows it)."""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch

from fresnel import cli
from fresnel.config import BOOLEAN_STYLES, apply_overrides, field_types, options_from_args, to_dict
from fresnel.registry import Family, families
from support.workspace import REPO

FAMILIES = families()
ids = [f.name for f in FAMILIES]


def commands(family: Family) -> dict[str, argparse.ArgumentParser]:
    """The subcommands the family's CLI registers, by name."""
    sub = argparse.ArgumentParser().add_subparsers()
    family.cli().add_commands(sub)
    return dict(sub.choices)


# --- options -------------------------------------------------------------------------------


def changed_values(options: type, instance=None) -> dict:
    """A value other than the default for every field (choices and types respected)."""
    instance = instance or options()
    kinds, values = field_types(options), {}
    for f in fields(options):
        current, kind = getattr(instance, f.name), kinds[f.name]
        if is_dataclass(current):
            values[f.name] = changed_values(type(current), current)
        elif kind is bool:
            values[f.name] = not current
        elif kind is int:
            values[f.name] = (current or 0) + 1
        elif kind is float:
            values[f.name] = (current or 0.0) * 1.5 + 0.25
        elif kind is str and current is None:
            values[f.name] = "given"
    return values


def checkpoint_round_trip(values: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"config": values}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["config"]


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_options_survive_a_checkpoint(family):
    if not family.options:
        pytest.skip(f"{family.name}: its options are Hydra configs (tests/{family.name}/)")
    for options in family.option_classes():
        loaded = options()
        flat = to_dict(loaded)
        assert apply_overrides(options(), checkpoint_round_trip(flat)) == loaded
        expected = apply_overrides(options(), changed_values(options))
        assert expected != loaded
        assert apply_overrides(options(), checkpoint_round_trip(to_dict(expected))) == expected


def command_line(parser: argparse.ArgumentParser, values: dict) -> list[str]:
    """Flags that set `values` through `parser`, in whatever boolean style it uses."""
    argv = []
    for action in parser._actions:
        if action.required:
            argv += [action.option_strings[0], "x"] if action.option_strings else ["x"]
    for dest, value in values.items():
        actions = [a for a in parser._actions if a.dest == dest and a.option_strings]
        if not actions:
            continue
        action = actions[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0 if value else 1])
        elif isinstance(action, argparse._StoreConstAction):
            argv.append(next(a for a in actions if a.const == value).option_strings[0])
        else:
            choices = list(action.choices or [])
            value = next((c for c in choices if c != action.default), value) if choices else value
            values[dest] = value
            argv += [action.option_strings[0], str(value).lower() if value in (True, False)
                     else str(value)]  # fmt: skip
    return argv


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_command_line_options_round_trip_and_switches_go_both_ways(family):
    parsers = commands(family)
    checked = 0
    for options in family.option_classes():
        for name, parser in parsers.items():
            dests = {a.dest for a in parser._actions}
            flat = [
                f.name for f in fields(options) if not is_dataclass(field_types(options)[f.name])
            ]
            if not set(flat) <= dests:
                continue
            values = {k: v for k, v in changed_values(options).items() if not isinstance(v, dict)}
            argv = command_line(parser, values)
            parsed = options_from_args(parser.parse_args(argv), options)
            assert to_dict(parsed) == to_dict(apply_overrides(options(), values)), name
            again = checkpoint_round_trip(to_dict(parsed))
            assert apply_overrides(options(), again) == parsed
            for switch in (f for f in flat if field_types(options)[f] is bool):
                for value in (True, False):  # every switch, both ways
                    got = options_from_args(parser.parse_args(command_line(parser, {switch: value})),
                                            options)  # fmt: skip
                    assert getattr(got, switch) is value, f"{name} {switch}={value}"
            checked += 1
    if family.options and not checked:
        pytest.skip(f"{family.name}: its options come from config files, not flags")


def test_the_boolean_styles_are_the_guides_spellings():
    from dataclasses import dataclass

    from fresnel.config import add_option_flags

    @dataclass
    class Options:
        use_amp: bool = True

    spellings = {"negatable": (["--use_amp"], ["--no-use_amp"]),
                 "switch": (["--use_amp"], ["--no_use_amp"]),
                 "value": (["--use_amp"], ["--use_amp", "false"])}  # fmt: skip
    assert set(spellings) == set(BOOLEAN_STYLES)
    for style, (on, off) in spellings.items():
        parser = argparse.ArgumentParser()
        add_option_flags(parser, Options, style)
        assert options_from_args(parser.parse_args(on), Options).use_amp is True
        assert options_from_args(parser.parse_args(off), Options).use_amp is False
        assert options_from_args(parser.parse_args([]), Options).use_amp is True


# --- rules, errors, docs ------------------------------------------------------------------


def rule_bodies(rule_file: Path) -> dict[str, str]:
    """Each rule of a rule file, by name: its indented lines."""
    parts = re.split(r"^rule (\w+):\n", rule_file.read_text(), flags=re.M)[1:]
    return {name: re.match(r"(?:(?:    .*)?\n)*", body).group(0) for name, body in
            zip(parts[::2], parts[1::2], strict=True)}  # fmt: skip


def rules_and_scripts(rule_file: Path) -> dict[str, str | None]:
    found = {}
    for rule, body in rule_bodies(rule_file).items():
        match = re.search(r'^\s+"\.\./scripts/([\w.]+)"', body, flags=re.M)
        found[rule] = match and match.group(1)
    return found


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_each_rule_runs_the_script_named_after_it(family):
    for rule_file in family.rules:
        rules = rules_and_scripts(REPO / rule_file)
        assert rules, rule_file
        for rule, script in rules.items():
            assert script == f"{rule}.py", f"{rule_file}: rule {rule} runs {script}"
            assert (REPO / "workflow/scripts" / script).is_file()
            if Path(rule_file).stem == family.name:
                assert rule.startswith(f"{family.name}_"), f"{rule_file}: rule {rule}"


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_each_rule_declares_its_threads(family):
    """Snakemake runs jobs side by side only while their threads fit the cores, and each job
    computes on its count (workflow/rules/common.smk): a rule without `threads` would be
    counted as one thread while torch used every core."""
    for rule_file in family.rules:
        for rule, body in rule_bodies(REPO / rule_file).items():
            assert re.search(r"^    threads: (1|MODEL_THREADS)$", body, flags=re.M), (
                f"{rule_file}: rule {rule} declares no threads"
            )


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_each_user_error_is_one_line_through_the_cli(family, monkeypatch, capsys):
    name = next(iter(commands(family)))
    for error in family.error_classes():
        parser = cli.build_parser()
        command = parser._subparsers._group_actions[0].choices[name]

        def fail(args, error=error):
            raise error("the input x.json is bad: fix it")

        command.set_defaults(func=fail)
        monkeypatch.setattr(cli, "build_parser", lambda parser=parser: parser)
        args = [name, *command_line(command, {})]
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        message = str(exit_.value.code)
        assert message.count("\n") == 0 and message.startswith(f"fresnel {name}: the input"), error


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_the_doc_page_names_every_command(family):
    page = REPO / family.doc
    assert page.is_file(), f"{family.name}: write {family.doc}"
    text = page.read_text()
    missing = [name for name in commands(family) if name not in text]
    assert not missing, f"{family.doc} does not name {missing}"


# --- a tiny training run, killed and resumed ------------------------------------------------


def fresnel(command: str, cwd: Path, **kwargs):
    argv = [sys.executable, "-m", "fresnel.cli", *shlex.split(command)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)  # fmt: skip


def finish(process) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return out


def final_state(path_and_key: str, run: Path):
    path, _, key = path_and_key.partition(":")
    if not key:
        return (run / path).read_bytes()
    return torch.load(run / path, map_location="cpu", weights_only=False)[key]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_a_tiny_run_killed_and_rerun_ends_byte_identical(family, tmp_path):
    smoke = family.smoke
    fill = {"work": tmp_path, "data": tmp_path / "data"}
    for name, text in smoke.files.items():
        (tmp_path / name).write_text(text)
    for command in smoke.prepare:
        finish(fresnel(command.format(**fill), tmp_path))

    finish(fresnel(smoke.train.format(**fill, run=tmp_path / "whole"), tmp_path))
    whole = final_state(smoke.final, tmp_path / "whole")

    parts = tmp_path / "parts"
    train = smoke.train.format(**fill, run=parts)
    process = fresnel(train, tmp_path)
    while process.poll() is None and not list(parts.glob(smoke.checkpoints)):
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before its first checkpoint"
    if (parts / smoke.final.partition(":")[0]).exists():
        assert not same(final_state(smoke.final, parts), whole), "killed too late to test"
    latest = max(parts.glob(smoke.checkpoints), key=lambda p: p.stat().st_mtime_ns)
    finish(fresnel(f"{train} {smoke.resume.format(latest=latest)}", tmp_path))
    assert same(final_state(smoke.final, parts), whole)


def same(a, b) -> bool:
    if isinstance(a, bytes):
        return a == b
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_training_on_a_missing_dataset_is_one_line(family, tmp_path):
    smoke = family.smoke
    for name, text in smoke.files.items():
        (tmp_path / name).write_text(text)
    missing = tmp_path / "no-such-data"
    command = smoke.train.format(work=tmp_path, data=missing, run=tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "fresnel.cli", *shlex.split(command)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fresnel {shlex.split(command)[0]}: ") and str(missing) in last, last
