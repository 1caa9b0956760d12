"""Checks that run before anything starts (no Prefect server, no embedded server).

A missing folder or a wrong URL should cost one line and a second, not a minute of
start-up and a page of tracebacks. Each problem is one line: what is wrong and how to
fix it. The API check reads the balance (retried like any request), so a bad key also
stops here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config.settings import Settings
from flows.endpoint import api_endpoint, check_access
from flows.errors import RunAborted
from tasks import storage
from tasks.retry import RetryPolicy

#: Settings whose flag is not their name.
_FLAGS = {"budget_usd": "--budget", "requests_per_second": "--rps"}


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per invalid setting, named as the user set it (flag or BULKSCRIBE_*)."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "settings"
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid {name} ({flag} / BULKSCRIBE_{name.upper()}): {msg}")
    return lines


def check_source(source: str, storage_options: dict[str, Any]) -> str | None:
    if not storage.is_remote(source):
        path = Path(source).expanduser()
        if not path.exists():
            return f"source {source} does not exist: check the path (a folder, a file or an fsspec URL)"
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            return f"source {source} is not readable by this user: fix its permissions"
        return None
    problem = _s3_credentials(source, storage_options)
    if problem:
        return problem
    try:
        fs, root = storage.filesystem_for(source, storage_options)
        if not fs.exists(root):
            return f"source {source} does not exist (or is not visible with these credentials): check the URL"
    except (OSError, ValueError) as exc:
        return f"cannot list source {source}: {_one_line(exc)}; check the URL, the credentials and the endpoint"
    return None


def check_out(out: str, storage_options: dict[str, Any]) -> str | None:
    if not storage.is_remote(out):
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            return f"output {out} is a file: --out must be a folder (existing or to be created)"
        parent = path
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return f"output {out} cannot be created: {parent} is not writable by this user; choose another --out"
        return None
    problem = _s3_credentials(out, storage_options)
    if problem:
        return problem
    try:
        fs, root = storage.filesystem_for(out, storage_options)
        bucket = root.split("/", 1)[0]
        if storage.is_s3(out) and not fs.exists(bucket):
            return f"output bucket {bucket} does not exist (or is not visible with these credentials): create it"
    except (OSError, ValueError) as exc:
        return f"cannot reach output {out}: {_one_line(exc)}; check the URL, the credentials and the endpoint"
    return None


def _s3_credentials(url: str, storage_options: dict[str, Any]) -> str | None:
    """S3 without credentials fails deep inside a listing; say so up front."""
    if not storage.is_s3(url) or storage_options.get("anon") or storage_options.get("key"):
        return None
    import botocore.session

    session = botocore.session.Session(profile=storage_options.get("profile"))
    try:
        creds = session.get_credentials()
    except Exception as exc:  # noqa: BLE001 - botocore raises many kinds for a bad profile/config
        return f"S3 credentials for {url} do not resolve ({type(exc).__name__}): check AWS_PROFILE / ~/.aws/config"
    if creds is None:
        return (f"no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                "or BULKSCRIBE_STORAGE_OPTIONS='{\"anon\": true}' for a public bucket")
    return None


def check_api(settings: Settings) -> str | None:
    """The configured API answers and takes the key (the embedded server is checked when it starts)."""
    if not settings.api_url:
        return None
    try:
        with api_endpoint(settings) as endpoint:
            check_access(endpoint, RetryPolicy(max_attempts=3, base_s=0.5, max_s=5.0))
    except RunAborted as exc:
        return str(exc)
    return None


def storage_problems(source: str, out: str, settings: Settings) -> list[str]:
    problems = [p for p in (check_source(source, settings.storage_options),
                            check_out(out, settings.storage_options)) if p]
    if settings.staging_url and storage.is_s3(settings.staging_url):
        problems += [p for p in (_s3_credentials(settings.staging_url, settings.storage_options),) if p]
    return problems


def check_storage(source: str, out: str, settings: Settings) -> None:
    """In a flow run (a deployment, a worker): the same checks, ending the run with their lines."""
    problems = storage_problems(source, out, settings)
    if problems:
        raise RunAborted("; ".join(problems))


def preflight(source: str, out: str, settings: Settings) -> list[str]:
    """Every problem found, one line each; empty when the run may start."""
    problems = storage_problems(source, out, settings)
    if not problems:  # the API check costs a round trip: only once the storage is right
        problems += [p for p in (check_api(settings),) if p]
    return problems


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0][:300] if text else type(exc).__name__
