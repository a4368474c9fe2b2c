"""`ess pin`: rewrite a workflow config's hf: sources from branches or tags to the Hub commits
they name now, in place, keeping every comment and the layout of the file.

A branch can move, so a rerun of a config that names one may measure other weights; the
workflow's dry run refuses a branch unless the config says allow_unpinned (ess.paper.config_checks).
Resolving needs the Hub (HfApi().model_info(repo, revision).sha): run it where the network is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ess.outputs import atomic_output
from ess.paper.e6.fetch import FetchError, is_pinned, parse_model_source


def unpinned_sources(config: dict) -> dict[str, str]:
    """{model name: source} of every hf: source in `config` whose revision is not a commit."""
    models = config.get("models") or {}
    return {
        name: model["source"]
        for name, model in models.items()
        if isinstance(model, dict)
        and str(model.get("source", "")).startswith("hf:")
        and not is_pinned(parse_model_source(model["source"]).revision)
    }


def hub_commit(repo_id: str, revision: str) -> str:
    """The commit `revision` of the Hub model repo `repo_id` names now; FetchError saying what
    to do if the Hub refuses (gated, private, unknown)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return HfApi().model_info(repo_id, revision=revision).sha
    except (GatedRepoError, RepositoryNotFoundError) as error:
        raise FetchError(
            f"the Hub refused {repo_id}@{revision} ({error.__class__.__name__}): accept its "
            f"licence on https://huggingface.co/{repo_id}, then `hf auth login` or export "
            f"HF_TOKEN, and run ess pin again"
        ) from error
    except HfHubHTTPError as error:
        raise FetchError(f"could not resolve {repo_id}@{revision} on the Hub: {error}") from error


def pin_text(text: str, commits: dict[str, str]) -> str:
    """`text` with each hf: source of `commits` ({source: commit}) rewritten to name the commit.
    A source is replaced only where it stands whole (followed by a quote, space, # or the end
    of the line), so `hf:a/b@main` does not touch `hf:a/b@main-v2`."""
    for source, commit in commits.items():
        pinned = f"{source.rpartition('@')[0]}@{commit}"
        text = re.sub(re.escape(source) + r"(?=[\s\"'#]|$)", pinned, text, flags=re.MULTILINE)
    return text


def pin_config(
    configfile: Path, resolve: Callable[[str, str], str] = hub_commit
) -> dict[str, tuple[str, str]]:
    """Rewrite `configfile` in place (atomically) with every unpinned hf: source pinned to the
    commit `resolve(repo_id, revision)` gives; return {model: (old source, new source)}."""
    import yaml

    configfile = Path(configfile)
    text = configfile.read_text()
    sources = unpinned_sources(yaml.safe_load(text) or {})
    commits = {}
    for source in sorted(set(sources.values())):
        parsed = parse_model_source(source)
        commit = resolve(parsed.repo_id, parsed.revision)
        if not is_pinned(commit):
            raise FetchError(f"the Hub gave {commit!r} for {source}, not a 40-hex commit")
        commits[source] = commit
    pinned = pin_text(text, commits)
    if pinned != text:
        with atomic_output(configfile) as temporary:
            temporary.write_text(pinned)
    return {
        name: (source, f"{source.rpartition('@')[0]}@{commits[source]}")
        for name, source in sources.items()
    }
