"""`slic summary`: what the pipeline made, in a dozen lines, read from reports/ after `dvc repro` (`make run` ends
with it): the encoder, its recall, the baselines, the classifiers, the transfer sets, the groups, the labels, the
registry's champion, and where each page and UI is. A user sees at once the number they came for and where to look.

Each line comes from one stage's report and is left out when that report is absent or from an older format; the
warnings the stages printed (excluded and undecodable videos, advice, a short run, a collapsed embedding) are
repeated at the end, so they do not scroll away in `dvc repro`'s output.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slic.report_freshness import Stale

Line = tuple[str, str]  # (what, the line)


Read = Callable[[str], "dict[str, Any] | None"]  # a report under reports/ by its relative name


def _reader(reports: Path) -> Read:
    """Reads each report of `reports` once (several lines may use one), as its JSON, or None when it is absent or
    unreadable (a stage that has not run)."""
    found: dict[str, dict[str, Any] | None] = {}

    def read(name: str) -> dict[str, Any] | None:
        if name not in found:
            try:
                found[name] = json.loads((reports / name).read_text())
            except (OSError, ValueError):
                found[name] = None
        return found[name]

    return read


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _encoder(pretrain: dict[str, Any]) -> str:
    if pretrain.get("labelled") is False:
        chosen = f"the last epoch ({pretrain['best_epoch']}) is best.pt: no classes to choose on"
    else:
        chosen = (f"best.pt from epoch {pretrain['best_epoch']} of {pretrain['epochs']}, val recall@1 "
                  f"{_pct(pretrain['best_val_recall_at_1'])}")
    return (f"mode {pretrain['mode']}, {pretrain['train_videos']} train videos, {chosen}; {pretrain['seconds']:.0f} s"
            f" on {pretrain['device']}")


def _retrieval(retrieval: dict[str, Any], val_videos: int) -> str:
    if retrieval.get("labelled") is False:
        nearest = min((key for key in retrieval if key.startswith("neighbour_cosine@")),
                      key=lambda key: int(key.split("@")[1]))
        return (f"no classes, so no recall: {nearest} {retrieval[nearest]:.2f}, effective rank "
                f"{retrieval['effective_rank']:.1f} of {retrieval['embedding_dim']} -> reports/retrieval.html (each "
                "video beside its nearest, to judge by eye)")
    from slic.retrieval import gallery_note

    first, *rest = sorted(int(key.split("@")[1]) for key in retrieval if key.startswith("recall@"))
    recalls = f"recall@{first} {_pct(retrieval[f'recall@{first}'])}" + "".join(
        f", @{k} {_pct(retrieval[f'recall@{k}'])}" for k in rest)
    note = gallery_note(retrieval["gallery_split"], val_videos)
    differs = retrieval.get("differs_from_paper") or []
    unlike = f"; an encoder unlike the paper's in {len(differs)} pretraining settings" if differs else ""
    return (f"{retrieval['query_split']} {recalls} ({retrieval['queries']} queries against {retrieval['gallery']} "
            f"{retrieval['gallery_split']} videos{': ' + note if note else ''}{unlike}) -> reports/retrieval.html")


def _retrieval_section(read: Read, reports: Path) -> list[str]:
    """The retrieval line, with what its gallery is (the val carve's size from the manifest's report)."""
    retrieval = read("retrieval.json")
    if retrieval is None:
        return []
    val = int(((read("manifest.json") or {}).get("splits") or {}).get("val", 0))
    return [_retrieval(retrieval, val)]


def _baselines(ablation: dict[str, Any]) -> str:
    if ablation.get("skipped"):
        return "skipped: the videos have no classes; measure on a labelled set of eval_sets (transfer, classify)"
    modes = ablation["modes"]
    return "recall@1 " + ", ".join(f"{mode} {_pct(row['recall@1'])}" for mode, row in modes.items()
                                   if "recall@1" in row) + " (reports/ablation.json)"


def _classify(read: Read) -> list[str]:
    finetune, probe = read("finetune.json"), read("linear_probe.json")
    if finetune is None and probe is None:
        return []
    if (finetune or {}).get("skipped") or (probe or {}).get("skipped"):
        return ["skipped: no classes to classify"]
    said = []
    if probe is not None:
        said.append(f"linear probe {probe['top1']:.1f}%")
    if finetune is not None:
        said.append(f"finetuned {finetune['pretrained']['top1']:.1f}% against {finetune['scratch']['top1']:.1f}% "
                    "from scratch")
    return ["test top-1: " + ", ".join(said)]


def transfer_sets(reports: Path) -> tuple[list[str], list[str]]:
    """(the eval sets with a folder under reports/transfer that params.yaml beside reports/ lists, those it no longer
    lists): a set dropped from eval_sets (`eval_sets: {}` for your own videos) leaves its reports behind, and their
    numbers must not stand beside a new encoder's. Without a readable params.yaml every folder counts."""
    import yaml

    folders = sorted(p.name for p in (reports / "transfer").glob("*") if p.is_dir())
    try:
        listed = (yaml.safe_load((reports.parent / "params.yaml").read_text()) or {}).get("eval_sets")
    except (OSError, yaml.YAMLError, AttributeError):
        return folders, []
    if not isinstance(listed, dict):
        return (folders, []) if listed is None else ([], folders)  # no key: every folder; `eval_sets: []`: none
    return [f for f in folders if f in listed], [f for f in folders if f not in listed]


def _transfer(name: str) -> Callable[[Read, Path], list[str]]:
    """The line of eval set `name` (its retrieval, and its finetuning when it classifies), a section of its own so
    that a stale set's line is marked and the others' are not."""
    def lines(read: Read, reports: Path) -> list[str]:
        retrieval = read(f"transfer/{name}/retrieval.json")
        if retrieval is None:
            return []
        line = (f"{name}: recall@1 {_pct(retrieval['pretrained']['recall@1'])} against random_init's "
                f"{_pct(retrieval['random_init']['recall@1'])}")
        classify = read(f"transfer/{name}/classify.json")
        if classify is not None and classify.get("enabled"):
            line += (f"; finetuned {classify['finetune']['pretrained']['top1']:.1f}% against "
                     f"{classify['finetune']['scratch']['top1']:.1f}% from scratch")
        return [f"{line} -> reports/transfer/{name}/retrieval.html"]

    return lines


def _clusters(clusters: dict[str, Any]) -> str:
    return f"{clusters['groups']} groups of {clusters['videos']} videos -> {clusters['html']}"


def _labels(spread: dict[str, Any]) -> str:
    if not spread.get("given"):
        return (f"none given yet: name the {spread.get('suggested', 20)} videos of {spread['html']} in "
                f"{spread['next_table']} and save it as {spread['given_file']} (labels/README.md)")
    return (f"{spread['given']} given in {spread['given_file']} name all {spread['videos']} videos -> "
            f"{spread['table']}; label next: {spread['html']}")


def _registry(promotion: dict[str, Any]) -> str:
    return (f"{promotion['model_name']} version {promotion['version']} {promotion['decision']}; "
            f"@{promotion['alias']} -> version {promotion['alias_version']}")


def _search(index: dict[str, Any]) -> str:
    return f"{index['vectors']} videos indexed: slic search VIDEO -k 10 --html hits.html (an application: slic serve)"


NOTED = (("pretrain", "pretrain", "short_run_note"), ("pretrain", "pretrain", "watch_note"),
         ("retrieval", "evaluate", "warning"), ("clusters", "clusters", "note"), ("promotion", "promote", "watch_note"))


def _notes(read: Read) -> list[str]:
    """What the stages warned of, so it does not scroll away in `dvc repro`'s output: videos excluded or failed, the
    manifest's and extract's advice (frame rates, near twins), a short run, a collapsed embedding, fewer groups."""
    said = []
    manifest = read("manifest.json") or {}
    if excluded := manifest.get("excluded"):
        reasons = Counter(str(item.get("reason", "")).split(":")[0] for item in excluded)
        why = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
        said.append(f"manifest: {len(excluded)} of {manifest['videos']} videos excluded ({why}) -> "
                    "reports/manifest.json")
    said += [f"manifest: {line}" for line in manifest.get("advice") or []]
    extract = read("extract.json") or {}
    if failed := extract.get("failed"):
        said.append(f"extract: {len(failed)} video(s) could not be decoded, e.g. {failed[0]['path']}: "
                    f"{failed[0]['error']}")
    if damaged := extract.get("damaged"):
        said.append(f"extract: {len(damaged)} video(s) decoded past damaged packets, e.g. "
                    f"{damaged[0]['path']}: {damaged[0]['note']}")
    said += [f"extract: {line}" for line in extract.get("advice") or []]
    for report, stage, key in NOTED:
        if value := (read(f"{report}.json") or {}).get(key):
            said.append(f"{stage}: {value}")
    said += [f"index: {line}" for line in (read("index.json") or {}).get("notes") or []]
    return said


def _single(report: str, line: Callable[[dict[str, Any]], str]) -> Callable[[Read, Path], list[str]]:
    """A section made from one report: its line, or none when the report is absent."""
    def lines(read: Read, reports: Path) -> list[str]:
        found = read(report)
        return [] if found is None else [line(found)]

    return lines


SECTIONS: tuple[tuple[str, Callable[[Read, Path], list[str]]], ...] = (
    ("encoder", _single("pretrain.json", _encoder)), ("retrieval", _retrieval_section),
    ("baselines", _single("ablation.json", _baselines)), ("classify", lambda read, _: _classify(read)),
    ("transfer", lambda read, reports: []), ("clusters", _single("clusters.json", _clusters)),
    ("labels", _single("spread_labels.json", _labels)), ("registry", _single("promotion.json", _registry)),
    ("search", _single("index.json", _search)), ("note", lambda read, reports: _notes(read) + _dropped(reports)))


def _stale_note(stale: Mapping[str, Stale]) -> str:
    """One line: what changed (an input, a setting, a command) and which stages read it, which stages come after
    those, and what to run."""
    readers: dict[str, set[str]] = {}
    for why in stale.values():
        readers.setdefault(why.what, set()).add(why.changed)
    changes = "; ".join(f"{what} (read by {', '.join(sorted(stages))})" for what, stages in sorted(readers.items()))
    after = sorted({why.stage for why in stale.values() if why.stage != why.changed})
    then = f"; {', '.join(after)} {'comes' if len(after) == 1 else 'come'} after those" if after else ""
    unwatched = sorted({why.changed for why in stale.values() if why.unwatched})  # `dvc repro` cannot see the change
    remake = (f"{', '.join(f'`dvc repro --single-item --force {stage}`' for stage in unwatched)}, then `dvc repro`, "
              "remakes them" if unwatched else "`dvc repro` remakes them (see `dvc status`)")
    return f"[stale] lines were made before a change: {changes}{then}; {remake}"


def _dropped(reports: Path) -> list[str]:
    """A note for the reports of eval sets params.yaml no longer lists (left out above)."""
    dropped = transfer_sets(reports)[1]
    if not dropped:
        return []
    return [f"transfer: reports/transfer/{', '.join(dropped)} left out: eval_sets of params.yaml no longer lists "
            f"{'it' if len(dropped) == 1 else 'them'} (the committed synthetic run's or an earlier run's; delete the "
            "folder to stop this note)"]


def _sections(reports: Path) -> list[tuple[str, Callable[[Read, Path], list[str]]]]:
    """SECTIONS with the transfer section as one section per eval set params.yaml lists (`transfer_sets`)."""
    sets = [("transfer", _transfer(name)) for name in transfer_sets(reports)[0]]
    return [entry for what, make in SECTIONS for entry in (sets if what == "transfer" else [(what, make)])]


def summary_lines(reports: str | Path = "reports", tracking_uri: str = "",
                  stale: Mapping[str, Stale] | None = None) -> list[Line]:
    """(what, line) for each report present under `reports`, then where the UIs are (`tracking_uri`: MLflow's).

    `stale` ({report: why}, slic.report_freshness.stale_reports) marks each line read from such a report
    "[stale]" and adds a note saying which stage changed and what to run, so an earlier run's numbers do not read
    as what the settings now make."""
    reports = Path(reports)
    read = _reader(reports)
    stale = stale or {}
    lines: list[Line] = []
    for what, make in _sections(reports):
        used: list[str] = []

        def reading(name: str) -> dict[str, Any] | None:
            used.append(name)
            return read(name)

        try:
            made = make(reading, reports)
        except (KeyError, TypeError, ValueError):  # a report of another version: left out rather than misread
            continue
        marked = what != "note" and any(name in stale for name in used)  # the stages' warnings stay as they are
        lines += [(what, f"[stale] {said}" if marked else said) for said in made]
    if tracking_uri and (spread := _seeds_line(read, tracking_uri)):
        marked = "[stale] " if "retrieval.json" in stale else ""
        at = max((i for i, (what, _) in enumerate(lines) if what == "retrieval"), default=len(lines) - 1) + 1
        lines.insert(at, ("retrieval", marked + spread))
    if any(said.startswith("[stale] ") for _, said in lines):
        lines.append(("note", _stale_note(stale)))
    if lines and tracking_uri:
        lines.append(("MLflow", f"{_mlflow_ui(tracking_uri)} (runs per stage; the registry's champion)"))
    return lines


def _recalls(row: dict[str, Any], prefix: str) -> dict[str, float]:
    """A row's recall@k as metric keys `<prefix>recall_at_<k>`."""
    return {f"{prefix}recall_at_{key.split('@')[1]}": float(value) for key, value in row.items()
            if key.startswith("recall@") and isinstance(value, (int, float))}


def _number(report: dict[str, Any] | None, key: str, metric: str) -> dict[str, float]:
    """{metric: report[key]} when the report has that number, else {}."""
    value = (report or {}).get(key)
    return {metric: float(value)} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def _trained(read: Read, reports: Path) -> dict[str, float]:
    pretrain = read("pretrain.json")
    return {**_number(pretrain, "best_val_recall_at_1", "pretrain.best_val_recall_at_1"),
            **_number(pretrain, "cluster_ami_last", "pretrain.cluster_ami_last"),
            **_recalls(read("retrieval.json") or {}, "evaluate.")}


def _baseline_recalls(read: Read, reports: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for mode, row in ((read("ablation.json") or {}).get("modes") or {}).items():
        metrics.update(_recalls(row, f"ablation.{mode}."))
    return metrics


def _classified(read: Read, reports: Path) -> dict[str, float]:
    finetune = read("finetune.json") or {}
    return {**_number(read("linear_probe.json"), "top1", "linear_probe.top1"),
            **_number(finetune.get("pretrained"), "top1", "finetune.pretrained_top1"),
            **_number(finetune.get("scratch"), "top1", "finetune.scratch_top1"),
            **_number(read("clusters.json"), "ami", "clusters.ami"),
            **_number(read("spread_labels.json"), "leave_one_out_accuracy", "spread_labels.leave_one_out_accuracy")}


def _transferred(read: Read, reports: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for folder in transfer_sets(reports)[0]:
        transfer = read(f"transfer/{folder}/retrieval.json") or {}
        metrics.update(_recalls(transfer.get("pretrained") or {}, f"transfer.{folder}."))
        metrics.update(_recalls(transfer.get("random_init") or {}, f"transfer.{folder}.random_init_"))
        classify = read(f"transfer/{folder}/classify.json") or {}
        if classify.get("enabled"):
            metrics.update(_number(classify["linear_probe"], "top1", f"classify.{folder}.linear_probe_top1"))
            for init in ("pretrained", "scratch"):
                metrics.update(_number(classify["finetune"][init], "top1", f"classify.{folder}.finetune_{init}_top1"))
    return metrics


def headline_metrics(reports: str | Path = "reports", stale: Mapping[str, Stale] | None = None) -> dict[str, float]:
    """The numbers of reports/ a user sorts and compares pipeline runs by, as MLflow metric keys named after their
    stage (`evaluate.recall_at_1`, `pretrain.best_val_recall_at_1`, `ablation.intra_video.recall_at_1`,
    `finetune.pretrained_top1`, `transfer.<set>.recall_at_1`, ...): the pipeline's parent run logs them, so the MLflow
    runs table shows each pipeline run's results in its own row. An absent report gives none; so does one of another
    format, without taking the others' along, and one of `stale` (slic.report_freshness.stale_reports): an earlier
    run's numbers must not stand beside the settings the run logs."""
    return _headline(Path(reports), stale or {})[0]


def stale_headline_reports(reports: str | Path = "reports", stale: Mapping[str, Stale] | None = None) -> list[str]:
    """The reports of `stale` whose numbers `headline_metrics` leaves out (sorted names relative to `reports`)."""
    return _headline(Path(reports), stale or {})[1]


def _headline(reports: Path, stale: Mapping[str, Stale]) -> tuple[dict[str, float], list[str]]:
    """(`headline_metrics`, the stale reports it left out: those it would have read had they been fresh)."""
    read = _reader(reports)
    left_out: set[str] = set()

    def fresh(name: str) -> dict[str, Any] | None:
        if name in stale:
            if read(name) is not None:
                left_out.add(name)
            return None
        return read(name)

    metrics: dict[str, float] = {}
    for part in (_trained, _baseline_recalls, _classified, _transferred):
        try:
            metrics.update(part(fresh, reports))
        except (KeyError, TypeError, ValueError, AttributeError):  # a report of another version: not misread
            pass
    return metrics, sorted(left_out)


def _seeds_line(read: Read, tracking_uri: str) -> str:
    """The current encoder's recall@1 over the seeds MLflow holds runs of (`slic.seed_spread`), or ''."""
    from slic.seed_spread import seed_spread, spread_line

    retrieval = read("retrieval.json") or {}
    spread = seed_spread(tracking_uri, str(retrieval.get("mlflow_run_id") or ""))
    return spread_line(spread) if spread else ""


def _mlflow_ui(tracking_uri: str) -> str:
    """How to open the MLflow UI on `tracking_uri`: a server's address, or `mlflow ui` on the SQLite store (its path
    relative to the working directory when it lies there, as the README writes it)."""
    if not tracking_uri.startswith("sqlite:///"):
        return f"open {tracking_uri}"
    store = Path(tracking_uri[len("sqlite:///"):])
    if store.is_absolute() and store.parent == Path.cwd():
        store = Path(store.name)
    return f"mlflow ui --backend-store-uri sqlite:///{store}"


def format_summary(lines: list[Line]) -> str:
    """The lines as an aligned block, or what to run when there is nothing yet."""
    if not lines:
        return "slic summary: no reports yet: run `dvc repro` (or `make run`)"
    width = max(len(what) for what, _ in lines)
    return "\n".join(["slic summary (reports/):"] + [f"  {what:<{width}}  {line}" for what, line in lines])


def summary_markdown(lines: list[Line]) -> str:
    """The lines as a markdown table (the Prefect UI's artifact, the MLflow parent run's description)."""
    if not lines:
        return "No reports yet."
    rows = "".join(f"| {what} | {line.replace('|', '/')} |\n" for what, line in lines)
    return f"### What this pipeline run made (reports/)\n\n| | |\n|---|---|\n{rows}"
