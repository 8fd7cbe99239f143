"""The options of ``metanode analytics``, checked in words before anything is sent.

A value a node would refuse (a job id that is not 64 hex characters, an input
name the chain does not accept, a file that does not exist) is refused here,
naming the option and what was expected, with the usage exit code (2): the
user reads ``--job-id: expected 64 hex characters, got 'deadbeef'`` instead of
the gateway's JSON schema error.

Click takes the word after an option as its value even when that word is
another option, so ``--job-id --follow`` would send ``--follow`` as the id.
Every value option of this group is a :class:`ValueOption`, which refuses a
value starting with ``--`` as a missing value. (``--query`` is the exception:
SQL text may start with a ``--`` comment.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# The chain's rule for a job's input names (node/cage/job.py INPUT_NAME), repeated here
# so that checking a CLI option does not import the cage.
INPUT_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MAX_DATASET_NAME = 128  # as dataset.register on chain
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REF = re.compile(r"(?P<name>.+?)(?:@(?P<version>[^@]*))?")


def refuse(ctx: click.Context | None, param: click.Parameter | None, problem: str) -> click.UsageError:
    """A usage error (exit 2) whose message starts with the option's name."""
    name = param.opts[0] if param is not None and getattr(param, "opts", None) else (param.name if param else "value")
    return click.UsageError(f"{name}: {problem}", ctx)


class ValueOption(click.Option):
    """An option that takes a value and refuses the next option in its place."""

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        raw = value if isinstance(value, (tuple, list)) else (value,)
        for item in raw:
            if isinstance(item, str) and item.startswith("--"):
                raise refuse(ctx, self, f"missing value: the next word {item!r} is an option "
                                        f"(write the value right after {self.opts[0]})")
        return super().process_value(ctx, value)


def value_option(*decls: str, **attrs: Any) -> Any:
    """``click.option`` with :class:`ValueOption` (the group's default for options that take values)."""
    attrs.setdefault("cls", ValueOption)
    return click.option(*decls, **attrs)


class HexId(click.ParamType):
    """A 64-hex-character id (a job id, a digest); answered in lowercase."""

    name = "HEX64"

    def __init__(self, what: str = "64 hex characters") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if HEX64.fullmatch(text):
            return text.lower()
        extra = f" ({len(text)} characters)" if len(text) > 16 and len(text) != 64 else ""
        raise refuse(ctx, param, f"expected {self.what}, got {str(value)!r:.80}{extra}")


def check_input_name(value: str, ctx: click.Context | None, param: click.Parameter | None) -> str:
    if not INPUT_NAME.fullmatch(value):
        raise refuse(ctx, param, f"expected an input name (a-z, 0-9 and _, not starting with a digit, "
                                 f"at most 63 characters), got {value!r:.80}")
    return value


class InputName(click.ParamType):
    """A job's input name as the chain accepts it (the table name SQL uses)."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return check_input_name(str(value), ctx, param)


@dataclass(frozen=True)
class DataFile:
    """One ``--data [NAME=]FILE``: the file to upload and the input name it gets (None: from the file)."""

    path: Path
    input_name: str | None


class DataFileType(click.ParamType):
    """``--data FILE`` or ``--data NAME=FILE``: an existing regular file."""

    name = "[NAME=]FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> DataFile:
        if isinstance(value, DataFile):
            return value
        text = str(value)
        name: str | None = None
        if not Path(text).exists() and "=" in text:  # a file whose name holds '=' is taken whole
            name, text = text.split("=", 1)
            check_input_name(name, ctx, param)
        path = Path(text)
        if not path.exists():
            raise refuse(ctx, param, f"no such file: {text!r}")
        if not path.is_file():
            raise refuse(ctx, param, f"not a regular file: {text!r}")
        return DataFile(path, name)


@dataclass(frozen=True)
class DatasetRef:
    """One ``--dataset [INPUT=]REF``: REF is a name (its latest version), name@version or a 64-hex digest."""

    ref: str
    input_name: str | None

    @property
    def is_digest(self) -> bool:
        return bool(HEX64.fullmatch(self.ref))

    @property
    def label(self) -> str:
        """The dataset's name for the default input name (the digest's when unnamed)."""
        return self.ref.split("@", 1)[0]


def split_input_name(value: str) -> tuple[str | None, str]:
    """``INPUT=REF`` as (INPUT, REF) when INPUT is a valid input name and REF is not
    empty; anything else as (None, the whole text), stripped."""
    text = value.strip()
    head, sep, rest = text.partition("=")
    if sep and INPUT_NAME.fullmatch(head) and rest:
        return head, rest
    return None, text


class DatasetRefType(click.ParamType):
    """``--dataset NAME``, ``NAME@VERSION``, ``DIGEST``, or any of them as ``INPUT=...``."""

    name = "[INPUT=]NAME[@V]|DIGEST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> DatasetRef:
        if isinstance(value, DatasetRef):
            return value
        name, text = split_input_name(str(value))
        if HEX64.fullmatch(text):
            return DatasetRef(text.lower(), name)
        match = _REF.fullmatch(text)
        if not text or match is None:
            raise refuse(ctx, param, f"expected NAME, NAME@VERSION or a 64-hex digest, got {str(value)!r:.80}")
        dataset, version = match["name"], match["version"]
        if len(dataset) > MAX_DATASET_NAME or _CONTROL.search(dataset):
            raise refuse(ctx, param, f"a dataset name is 1-{MAX_DATASET_NAME} characters without control characters, "
                                     f"got {dataset!r:.80}")
        if version is not None and not (version.isdigit() and int(version) >= 1):
            raise refuse(ctx, param, f"the version after '@' is a number from 1, got {str(value)!r:.80}")
        return DatasetRef(text, name)


class JobTypeChoice(click.Choice[str]):
    """``--type``'s choices: the job types of the registry (node/app/jobtypes.py),
    read when the option is parsed or shown, so the CLI offers exactly what this
    build's chain accepts (sorted by name). A value is taken in any spelling
    ``canonical_job_type`` accepts (``trend_analysis``, ``Trend-Analysis``), as
    the planning document writes it."""

    def __init__(self) -> None:  # no fixed list: see choices
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from node.app.jobtypes import job_type_names

        return tuple(sorted(job_type_names()))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from node.app.jobtypes import canonical_job_type

        try:
            return canonical_job_type(str(value))
        except (ValueError, KeyError) as exc:
            self.fail(str(exc).strip("'\""), param, ctx)


class JobTypeOption(ValueOption):
    """``--type``, whose help lists each registered job type's summary line."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from node.app.jobtypes import JOB_TYPES

        self.help = "; ".join(f"{name}: {JOB_TYPES[name].summary}" for name in sorted(JOB_TYPES))
        return super().get_help_record(ctx)


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--param NAME=VALUE`` pairs as job parameters (digits as integers)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--param: expected NAME=VALUE, got {pair!r:.80}")
        out[name] = int(value) if value.lstrip("-").isdigit() else value
    return out


NODE_OPTION = value_option("--node", "node_addr", required=True, envvar="METANODE_NODE",
                           help="Gateway multiaddr ending in /p2p/ID (or $METANODE_NODE).")
KEY_OPTION = value_option("--key", "key_path", envvar="METANODE_KEY", help="Tenant key file (or $METANODE_KEY).")
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress on stderr (for scripts).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout; no progress on stderr.")
JOB_ID_OPTION = value_option("--job-id", required=True, type=HexId(), help="The job's id (64 hex characters).")
