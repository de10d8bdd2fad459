"""The command line: one parser for `python -m export` and the `triton-embeddings` script,
with help for every flag, defaults that follow from what was given, and exit codes that
tell a usage error (2) from refused input (1).

Errors a user meets at export (a folder that does not exist, an architecture open_clip does
not know, a hub that cannot be reached or an id it does not have) end in one line naming the
model and the cause. Those commands run concurrently from the start of this module: each
waits on the hub's retries (about a minute here, where the hub is unreachable).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export import __version__, cli
from export.errors import UserError
from export.repository.config import write_config
from export.repository.records import RECORD_PARAMETER, PipelineRecord
from export.serving.server import free_port

MODULE = [sys.executable, "-m", "export"]
SCRIPT = Path(sys.executable).parent / "triton-embeddings"  # [project.scripts], after pip install -e .
EXPORT_TIMEOUT = 400  # seconds: the hub's retries, torch's import, four exports sharing two cores

# What a user gets wrong at export, and what the one line must name.
MISTAKES = {
    "missing folder": (["text", "/no/such/folder"], ["/no/such/folder", "no such folder"]),
    "unknown hub id": (["text", "sentence-transformers/does-not-exist"], ["sentence-transformers/does-not-exist"]),
    "unknown architecture": (["clip", "ViT-B-33", "--pretrained", "none"], ["ViT-B-33", "ViT-B-32", "list_models"]),
    "weights not downloadable": (["clip", "ViT-B-32", "--pretrained", "openai"], ["ViT-B-32", "openai"]),
}


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def assert_one_error_line(done: subprocess.CompletedProcess | tuple, *names: str) -> str:
    """Exit code 1, no traceback, and one `error:` line, the last, naming each of `names`."""
    returncode, stderr = (done.returncode, done.stderr) if hasattr(done, "returncode") else done
    assert returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen]]:
    """Every MISTAKES export, started at once; the real download path (no HF_HUB_OFFLINE)."""
    repository = tmp_path_factory.mktemp("mistakes") / "repo"
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    started = {
        mistake: subprocess.Popen(
            [*MODULE, *args, "--name", "x", "--repository", str(repository)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mistake, (args, _) in MISTAKES.items()
    }
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_export_mistakes_end_in_one_line_naming_the_model(mistakes, mistake: str) -> None:
    _, names = MISTAKES[mistake]
    _, stderr = mistakes[mistake].communicate(timeout=EXPORT_TIMEOUT)
    assert_one_error_line((mistakes[mistake].returncode, stderr), *names)


@pytest.mark.parametrize("command", [MODULE, [str(SCRIPT)]], ids=["module", "script"])
def test_version_and_prog(command: list[str]) -> None:
    assert SCRIPT.is_file(), "no console script: pip install -e . (make does when pyproject.toml changes)"
    done = run([*command, "--version"])
    assert done.returncode == 0 and done.stdout.strip() == f"triton-embeddings {__version__}"
    prog = "python -m export" if command == MODULE else "triton-embeddings"
    usage = run([*command, "text", "--help"]).stdout
    assert usage.startswith(f"usage: {prog} text [-h]"), usage


def test_usage_errors_exit_2_and_refused_input_exits_1(tmp_path: Path) -> None:
    done = run([*MODULE, "text"])  # MODEL missing
    assert done.returncode == 2 and "the following arguments are required: MODEL" in done.stderr
    assert run([*MODULE, "perf", "x", "--protocol", "udp"]).returncode == 2
    done = run([*MODULE, "remove", "../x", "--repository", str(tmp_path)])
    assert_one_error_line(done, "invalid pipeline name")


def _actions(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.Action]]:
    """Every action of the parser and of its subcommands' parsers, with where it is."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice
            for name, subparser in action.choices.items():
                yield from _actions(subparser, f"{path} {name}")


def test_every_flag_and_positional_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, action in _actions(cli.build_parser())
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert not missing


def test_every_switch_has_a_no_form() -> None:
    switches = [
        (path, action)
        for path, action in _actions(cli.build_parser())
        if action.option_strings and action.nargs == 0 and not isinstance(action, argparse._HelpAction)
    ]
    odd = [
        f"{path} {action.option_strings}"
        for path, action in switches
        if not isinstance(action, (argparse.BooleanOptionalAction, argparse._VersionAction))
    ]
    assert len(switches) > 5 and not odd
    assert cli.parse_args(["clip", "ViT-B-32", "--no-draft"]).draft is False
    assert cli.parse_args(["clip", "ViT-B-32"]).draft is True
    args = cli.parse_args(["text", "m", "--trust-remote-code", "--no-tensorrt", "--tensorrt-fp16"])
    assert (args.trust_remote_code, args.tensorrt, args.tensorrt_fp16) == (True, False, True)
    assert cli.parse_args(["list", "--json"]).json is True


def _positionals(command: str) -> list[argparse.Action]:
    (commands,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [a for a in commands.choices[command]._actions if not a.option_strings]


def test_a_positional_means_the_same_in_every_command() -> None:
    for command in ("text", "clip"):
        (model,) = _positionals(command)
        assert (model.dest, model.metavar) == ("model", "MODEL")
    pipelines = [_positionals(command) for command in ("perf", "stats", "remove")]
    assert all(len(positionals) == 1 for positionals in pipelines)
    assert {(p.dest, p.metavar, p.help) for (p,) in pipelines} == {("pipeline", "PIPELINE", pipelines[0][0].help)}
    assert _positionals("list") == [] and _positionals("serve") == []


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["text", "sentence-transformers/all-MiniLM-L6-v2"], "all-MiniLM-L6-v2"),
        (["text", "BAAI/bge-small-en-v1.5"], "bge-small-en-v1.5"),
        (["text", "sentence-transformers/all-MiniLM-L6-v2", "--name", "mine"], "mine"),
        (["clip", "ViT-B-32", "--pretrained", "openai"], "ViT-B-32"),
        (["clip", "ViT-B/32"], "ViT-B-32"),  # open_clip's legacy spelling of the same architecture
        (["clip", "hf-hub:timm/ViT-B-16-SigLIP"], "ViT-B-16-SigLIP"),
        (["clip", "local-dir:/models/clip-x/"], "clip-x"),
    ],
)
def test_name_defaults_from_the_model(argv: list[str], name: str) -> None:
    assert cli.parse_args(argv).name == name


def test_a_local_folder_names_the_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    assert cli.parse_args(["text", str(tmp_path / "my-model") + "/"]).name == "my-model"
    monkeypatch.chdir(tmp_path / "my-model")
    assert cli.parse_args(["text", "."]).name == "my-model"
    assert cli.parse_args(["clip", "local-dir:."]).name == "my-model"


def test_a_default_name_that_is_no_pipeline_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pass --name"):
        cli.parse_args(["text", str(tmp_path / "two words")])
    assert cli.parse_args(["text", str(tmp_path / "two words"), "--name", "two-words"]).name == "two-words"
    done = run([*MODULE, "clip", "local-dir:/models/.hidden", "--repository", str(tmp_path)])
    assert_one_error_line(done, ".hidden", "pass --name")


def test_perf_url_follows_the_protocol() -> None:
    assert cli.parse_args(["perf", "p"]).url == "localhost:8001"
    assert cli.parse_args(["perf", "p", "--protocol", "grpc"]).url == "localhost:8001"
    assert cli.parse_args(["perf", "p", "--protocol", "http"]).url == "localhost:8000"
    assert cli.parse_args(["perf", "p", "--protocol", "http", "--url", "host:9000"]).url == "host:9000"


def _clip_record(repository: Path, name: str) -> PipelineRecord:
    """A CLIP pipeline's record, as its ensembles carry it (no models behind it)."""
    ensembles = (f"{name}_text", f"{name}_image")
    record = PipelineRecord(name, "clip", "python", "fp32", 32, ensembles, (f"{name}_text_encoder",))
    for ensemble in ensembles:
        config = mc.ModelConfig(name=ensemble, platform="ensemble")
        config.parameters[RECORD_PARAMETER].string_value = record.to_json()
        (repository / ensemble).mkdir(parents=True)
        write_config(config, repository / ensemble)
    return record


def test_perf_names_the_ensembles_of_a_pipeline_of_several(tmp_path: Path) -> None:
    _clip_record(tmp_path, "c")
    done = run([*MODULE, "perf", "c", "--repository", str(tmp_path)])
    assert_one_error_line(done, "c_text, c_image")


def test_stats_takes_the_repository_like_every_command(tmp_path: Path) -> None:
    for command in ("list", "remove", "perf", "stats", "serve", "text", "clip"):
        parsed = cli.parse_args([command, *(["x"] if command not in ("list", "serve") else [])], prog="x")
        assert parsed.repository == Path("model_repository"), command
    assert cli.parse_args(["stats", "x", "--repository", str(tmp_path)]).repository == tmp_path
    _clip_record(tmp_path, "c")
    url = f"127.0.0.1:{free_port()}"  # nothing listens: the error names the server
    done = run([*MODULE, "stats", "c_image", "--repository", str(tmp_path), "--url", url])
    assert_one_error_line(done, url)


def _loaded_after(code: str, modules: set[str]) -> list[str]:
    """Which of `modules` a fresh interpreter holds after running `code`."""
    check = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & {modules!r}))"
    return eval(run([sys.executable, "-c", check]).stdout)


def test_the_cli_loads_no_torch_and_no_protobufs_at_import() -> None:
    exporters = {"torch", "onnx", "sentence_transformers", "open_clip", "transformers"}
    assert _loaded_after("import export.cli", {"google", "tritonclient", *exporters}) == []
    assert _loaded_after("import export.cli; export.cli.build_parser()", exporters) == []
