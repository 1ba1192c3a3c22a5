"""Prepare the two-domain corpus and the byte-level BPE tokenizer of the embedded model.

Sources (both obtainable offline from the Debian archive with ``apt-get download``):

- **prose** — the reStructuredText sources of the Python 3.11 documentation, as shipped in Debian's
  ``python3.11-doc`` package (``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``).
  Licence: Python Software Foundation License Version 2 (see the package's ``copyright`` file).
  ``whatsnew/changelog.rst.txt`` (a list of issue numbers, not prose) is left out.
- **code** — the Python 3.11 standard-library modules, as shipped in Debian's
  ``libpython3.11-stdlib`` package (``/usr/lib/python3.11/**/*.py``). Licence: PSF License v2.

Preprocessing, deterministic: each file is decoded as UTF-8 (undecodable bytes replaced), line
endings become ``\\n``, trailing whitespace is stripped from every line and runs of more than two
blank lines become two. Files shorter than 200 characters are dropped. Each file goes to the
held-out split when the first 8 hex digits of sha256(domain + ":" + relative path), read as an
integer, modulo 100 is below ``--heldout-percent``; the rest is train. Within each split, files are
taken in order of that hash until the split's character cap is reached (the last file is cut at a
line boundary). Caps: ``--train-chars`` per domain for train, ``--heldout-chars`` per domain for
held-out.

Outputs (``--out``, default ``data/corpus``, gitignored):

- ``{train,heldout}_{prose,code}.txt`` — documents separated by the line ``<|endoftext|>``;
- ``manifest.json`` — package versions and sha256 of the .deb files, per-file split assignment;
- ``tokenizer/`` — byte-level BPE (vocab ``--vocab-size``) trained on the train split only, in the
  standard Hugging Face format (tokenizer.json + tokenizer_config.json), loadable with
  ``transformers.AutoTokenizer.from_pretrained``;
- ``{train,heldout}_{prose,code}.npy`` — token ids (uint16), every document followed by EOS.

and the shipped held-out evaluation text ``src/bh_routing/embedded/eval_text.txt`` (both domains,
each introduced by a marker line ``<<<bh-routing-eval-domain: NAME>>>``, documents separated by the
line ``<|endoftext|>``). It holds **every** held-out file of each domain, in hash order, each cut to
its first ``--eval-doc-chars`` characters (at a line boundary), up to ``--eval-chars`` per domain:
many short documents rather than a few long ones, because documents are the unit of every
interval and test (an evaluation takes one 256-token window per document). The training split
does not depend on these two options. Before writing it, the script checks that every document
in it is a held-out file by the hash rule above and that none of its text occurs in a train file
of the same domain, and writes ``eval_manifest.json`` (files, characters) next to ``manifest.json``.

**Edition 2 of the evaluation text (the default; ``--eval-edition 1`` writes the text above
alone).** Each domain's block starts with exactly the edition-1 documents, in the same order (so a
document id ``domain:index`` below their count names the same document in both editions), and then
gains documents the model never saw, taken round-robin over the sources below until the domain
holds ``--eval-docs`` documents:

- **beyond-cap** (prose only) — ``python3.11-doc`` files that the hash rule puts in train but that
  lie beyond the ``--train-chars`` cap in hash order, so no character of them is in the training
  text (the file the cap cuts is not one of them). Same distribution as the training text.
- **other-package** — documents of other Debian packages, never part of any training text:
  prose = the reStructuredText sources of the Sphinx, Flask, pytest and Werkzeug manuals
  (``html/_sources/**/*.rst.txt`` of ``sphinx-doc``, ``python-flask-doc``, ``python-pytest-doc``,
  ``python-werkzeug-doc``); code = the Python modules of the same four projects (``python3-sphinx``,
  ``python3-pytest``, ``python3-flask``, ``python3-werkzeug``). Licences: BSD-2-Clause (Sphinx),
  BSD-3-Clause (Flask, Werkzeug), Expat/MIT (pytest), read from each package's ``copyright`` file,
  which is shipped beside the text (``eval_licences/PACKAGE.copyright``). Changelogs, release
  announcements, licence, author and contributing pages are left out. The distribution differs from
  the training text: third-party manuals and libraries (web frameworks, a test runner, a
  documentation generator) written by other authors in another style - more modern Python (type
  annotations, f-strings), other vocabulary - while the training text is CPython's own
  documentation and standard library.

Each candidate is cleaned as above, cut to ``--eval-doc-chars``, and must hold at least
``--extra-min-chars`` characters, 90 % of them ASCII. It is then rejected when it *shares text*
(``bh_routing.embedded._overlap``: a 100-character passage with at least 25 letters or digits) with
the training text of either domain, or with a document already in the evaluation text (near
duplicates are not independent units). Candidates are tried in order of sha256(package + ":" +
path). Edition-1 documents are kept as they are, with their shared passages counted in the
manifest. The script also writes ``tests/embedded/data/train_passages.npy``, the winnowed passage
hashes of the training text, with which the tests re-check every shipped document offline.

Manifest shipped beside the text: ``src/bh_routing/embedded/eval_manifest.json`` (edition, per
domain and document in text order: package, version, path, origin, licence, characters, shared
passages; packages with version, .deb sha256 and licence; rejected candidates with the reason).

Usage::

    python scripts/prepare_corpus.py                  # apt-get download + dpkg-deb -x into data/
    python scripts/prepare_corpus.py --eval-text-only # only the evaluation text: no tokenizer, no .npy
    python scripts/prepare_corpus.py --eval-text-only --eval-edition 1   # the 64-document edition
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic, polite tokenizer training

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL_TEXT_PATH = ROOT / "src" / "bh_routing" / "embedded" / "eval_text.txt"
DOMAIN_MARKER = "<<<bh-routing-eval-domain: {}>>>"
DOC_SEP = "<|endoftext|>"
PAD = "<|pad|>"
PACKAGES = {"prose": "python3.11-doc", "code": "libpython3.11-stdlib"}
SOURCE_GLOBS = {
    "prose": ("usr/share/doc/python3.11/html/_sources", "*.rst.txt"),
    "code": ("usr/lib/python3.11", "*.py"),
}
EXCLUDE = {"prose": {"whatsnew/changelog.rst.txt"}, "code": set()}
LICENCE = "Python Software Foundation License Version 2 (PSF-2.0)"

# Edition 2 of the evaluation text: documents of other Debian packages (package -> folder, file
# pattern, path prefixes kept), the same four projects in both domains.
SHIPPED_MANIFEST_PATH = EVAL_TEXT_PATH.parent / "eval_manifest.json"
LICENCE_DIR = EVAL_TEXT_PATH.parent / "eval_licences"
TRAIN_PASSAGES_PATH = ROOT / "tests" / "embedded" / "data" / "train_passages.npy"
_SOURCES_DIR = "usr/share/doc/{}/html/_sources"
_SITE = "usr/lib/python3/dist-packages"
EXTRA_SOURCES: dict[str, dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "prose": {
        "sphinx-doc": (_SOURCES_DIR.format("sphinx-doc"), "*.rst.txt", ()),
        "python-flask-doc": (_SOURCES_DIR.format("python-flask-doc"), "*.rst.txt", ()),
        "python-pytest-doc": (_SOURCES_DIR.format("python-pytest-doc"), "*.rst.txt", ()),
        "python-werkzeug-doc": (_SOURCES_DIR.format("python-werkzeug-doc"), "*.rst.txt", ()),
    },
    "code": {
        "python3-sphinx": (_SITE, "*.py", ("sphinx/",)),
        "python3-pytest": (_SITE, "*.py", ("_pytest/", "pytest/")),
        "python3-flask": (_SITE, "*.py", ("flask/",)),
        "python3-werkzeug": (_SITE, "*.py", ("werkzeug/",)),
    },
}
#: Not prose or code of the project: changelogs, release announcements, licence/author/contributing pages.
EXTRA_SKIP = re.compile(r"(^|/)(announce/|changelog|changes|license|authors|contributing|history)", re.IGNORECASE)
#: Licences of the "Files: *" stanza of each package's copyright file (checked when read).
EXTRA_LICENCES = {
    "sphinx-doc": "BSD-2-clause", "python3-sphinx": "BSD-2-clause",
    "python-flask-doc": "BSD-3-clause", "python3-flask": "BSD-3-clause",
    "python-pytest-doc": "Expat", "python3-pytest": "Expat",
    "python-werkzeug-doc": "BSD-3-clause", "python3-werkzeug": "BSD-3-clause",
}


def fetch_debs(deb_dir: Path, extract_dir: Path, packages=tuple(PACKAGES.values())) -> dict[str, dict[str, str]]:
    """Download Debian packages (if absent) and extract them; return name -> version/sha."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, str]] = {}
    for package in packages:
        debs = sorted(deb_dir.glob(f"{package}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", package], cwd=deb_dir, check=True)
            debs = sorted(deb_dir.glob(f"{package}_*.deb"))
        deb = debs[-1]
        extract_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extract_dir)], check=True)
        info[package] = {
            "file": deb.name,
            "version": deb.name.split("_")[1],
            "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        }
    return info


def clean(text: str) -> str:
    """Normalise line endings and whitespace (see module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n") + "\n"


def bucket(domain: str, rel: str) -> int:
    return int(hashlib.sha256(f"{domain}:{rel}".encode()).hexdigest()[:8], 16)


def take(docs: list[tuple[str, str]], cap: int) -> list[tuple[str, str]]:
    """Documents in the given order until ``cap`` characters (last one cut at a line boundary)."""
    out, used = [], 0
    for rel, text in docs:
        if used >= cap:
            break
        if used + len(text) > cap:
            cut = text[: cap - used]
            cut = cut[: cut.rfind("\n") + 1] if "\n" in cut else ""
            if len(cut) < 200:
                break
            text = cut
        out.append((rel, text))
        used += len(text)
    return out


def collect(extract_dir: Path, domain: str, heldout_percent: int) -> dict[str, list[tuple[str, str]]]:
    base, pattern = SOURCE_GLOBS[domain]
    root = extract_dir / base
    splits: dict[str, list[tuple[int, str, str]]] = {"train": [], "heldout": []}
    for path in sorted(root.rglob(pattern)):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if rel in EXCLUDE[domain]:
            continue
        text = clean(path.read_bytes().decode("utf-8", errors="replace"))
        if len(text) < 200:
            continue
        b = bucket(domain, rel)
        split = "heldout" if b % 100 < heldout_percent else "train"
        splits[split].append((b, rel, text))
    return {k: [(rel, t) for _, rel, t in sorted(v)] for k, v in splits.items()}


def eval_documents(
    splits: dict[str, list[tuple[str, str]]], domain: str, heldout_percent: int, *, doc_chars: int, cap: int
) -> list[tuple[str, str]]:
    """Held-out files of ``domain`` for the shipped evaluation text, each cut to ``doc_chars``.

    Raises RuntimeError if a chosen file is not held out by the hash rule, or if its text (the
    first 400 characters after cutting) occurs in a train file: the shipped text must never hold
    training text.
    """
    docs = take([(rel, take([(rel, t)], doc_chars)[0][1]) for rel, t in splits["heldout"]], cap)
    train_rels = {rel for rel, _ in splits["train"]}
    for rel, text in docs:
        if bucket(domain, rel) % 100 >= heldout_percent or rel in train_rels:
            raise RuntimeError(f"{domain}:{rel} is a train file by the hash rule")
        probe = text[:400]
        if any(probe in t for _, t in splits["train"]):
            raise RuntimeError(f"{domain}:{rel}: its text occurs in a train file")
    return docs


def write_eval_text(docs: dict[str, list[tuple[str, str]]], out: Path) -> dict:
    """Write ``eval_text.txt`` (marker line per domain, documents separated) and return its manifest."""
    parts = []
    for domain, ds in docs.items():
        parts.append(DOMAIN_MARKER.format(domain) + "\n")
        parts.append(f"\n{DOC_SEP}\n".join(t for _, t in ds))
    EVAL_TEXT_PATH.parent.mkdir(parents=True, exist_ok=True)
    EVAL_TEXT_PATH.write_text("".join(parts), encoding="utf-8")
    manifest = {
        "files": {d: [rel for rel, _ in ds] for d, ds in docs.items()},
        "chars": {d: [len(t) for _, t in ds] for d, ds in docs.items()},
        "sha256": hashlib.sha256(EVAL_TEXT_PATH.read_bytes()).hexdigest(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------- edition 2
def copyright_licence(path: Path) -> str:
    """The ``License:`` of the ``Files: *`` stanza of a machine-readable Debian copyright file."""
    for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        if re.search(r"^Files:\s*\*\s*$", stanza, re.MULTILINE):
            m = re.search(r"^License:\s*(\S+)", stanza, re.MULTILINE)
            if m:
                return m.group(1)
    raise RuntimeError(f"{path}: no 'Files: *' stanza with a License")


def fetch_extra(deb_dir: Path, extract_root: Path) -> dict[str, dict[str, str]]:
    """Download and extract the other packages (each into its own folder); add licence and copyright."""
    info = {}
    for domain in EXTRA_SOURCES:
        for package in EXTRA_SOURCES[domain]:
            info.update(fetch_debs(deb_dir, extract_root / package, (package,)))
            copyright_file = extract_root / package / "usr" / "share" / "doc" / package / "copyright"
            licence = copyright_licence(copyright_file)
            if licence != EXTRA_LICENCES[package]:
                raise RuntimeError(f"{package}: licence {licence!r}, expected {EXTRA_LICENCES[package]!r}")
            LICENCE_DIR.mkdir(parents=True, exist_ok=True)
            (LICENCE_DIR / f"{package}.copyright").write_bytes(copyright_file.read_bytes())
            info[package].update(licence=licence, copyright=f"eval_licences/{package}.copyright")
    return info


def extra_candidates(extract_root: Path, domain: str, doc_chars: int, min_chars: int) -> dict[str, list[tuple[str, str]]]:
    """Per package of ``domain``: its eligible files (cleaned, cut to ``doc_chars``), in hash order."""
    out = {}
    for package, (base, pattern, prefixes) in EXTRA_SOURCES[domain].items():
        root = extract_root / package / base
        docs = []
        for path in sorted(root.rglob(pattern)):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or path.is_symlink() or EXTRA_SKIP.search(rel):
                continue
            if prefixes and not rel.startswith(prefixes):
                continue
            text = clean(path.read_bytes().decode("utf-8", errors="replace"))
            cut = take([(rel, text)], doc_chars)
            if not cut or len(cut[0][1]) < min_chars:
                continue
            text = cut[0][1]
            if sum(ch.isascii() for ch in text) < 0.9 * len(text):
                continue
            docs.append((bucket(package, rel), rel, text))
        out[package] = [(rel, t) for _, rel, t in sorted(docs)]
    return out


def extend_eval_documents(
    first: dict[str, list[tuple[str, str]]],
    candidates: dict[str, dict[str, list[tuple[str, str]]]],
    train_texts: list[str],
    *,
    per_domain: int,
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The edition-2 documents per domain (edition 1 first) and the rejected candidates.

    ``first``: the edition-1 documents per domain; ``candidates``: per domain, package -> (path,
    text) in the order to try, the first package being the beyond-cap source where there is one.
    Candidates are taken round-robin over the packages; a candidate sharing a passage with the
    training text or with a document already taken is rejected.
    """
    from bh_routing.embedded import _overlap

    train = np.unique(np.concatenate([_overlap.passage_hashes(t) for t in train_texts]))  # (P,) sorted
    docs: dict[str, list[dict]] = {}
    rejected: dict[str, list[dict]] = {}
    taken = np.empty(0, dtype=np.uint64)  # passages of every document taken so far, both domains
    for domain, ds in first.items():
        docs[domain] = []
        for rel, text in ds:
            docs[domain].append({"package": PACKAGES[domain], "path": rel, "origin": "held-out", "text": text,
                                 "shared_passages": _overlap.shared_passages(text, train)})
            taken = np.union1d(taken, _overlap.passage_hashes(text))
    for domain, by_package in candidates.items():
        rejected[domain] = []
        queues = {p: list(c) for p, c in by_package.items()}
        while len(docs[domain]) < per_domain and any(queues.values()):
            for package, queue in queues.items():
                if len(docs[domain]) >= per_domain:
                    break
                while queue:
                    rel, text = queue.pop(0)
                    if _overlap.shared_passages(text, train):
                        rejected[domain].append({"package": package, "path": rel, "reason": "shares text with the training text"})
                        continue
                    if _overlap.shared_passages(text, taken):
                        rejected[domain].append({"package": package, "path": rel, "reason": "shares text with another evaluation document"})
                        continue
                    origin = "beyond-cap" if package == PACKAGES[domain] else "other-package"
                    docs[domain].append({"package": package, "path": rel, "origin": origin, "text": text, "shared_passages": 0})
                    taken = np.union1d(taken, _overlap.passage_hashes(text))
                    break
        if len(docs[domain]) < per_domain:
            raise RuntimeError(f"{domain}: only {len(docs[domain])} documents, --eval-docs asks {per_domain}")
    return docs, rejected


def write_eval_text_v2(docs: dict[str, list[dict]], meta: dict) -> dict:
    """Write ``eval_text.txt`` and the shipped ``eval_manifest.json`` (documents without their text)."""
    write_eval_text({d: [(x["path"], x["text"]) for x in ds] for d, ds in docs.items()}, Path(meta.pop("_out")))
    manifest = {
        **meta,
        "sha256": hashlib.sha256(EVAL_TEXT_PATH.read_bytes()).hexdigest(),
        "counts": {d: {o: sum(x["origin"] == o for x in ds) for o in ("held-out", "beyond-cap", "other-package")}
                   for d, ds in docs.items()},
        "documents": {d: [{k: v for k, v in x.items() if k != "text"} | {"chars": len(x["text"])} for x in ds]
                      for d, ds in docs.items()},
    }
    SHIPPED_MANIFEST_PATH.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def train_tokenizer(train_texts: list[str], vocab_size: int, out_dir: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        train_texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[DOC_SEP, PAD], show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=DOC_SEP,
        eos_token=DOC_SEP,
        unk_token=DOC_SEP,
        pad_token=PAD,
        model_max_length=1024,  # = max_position_embeddings of the model
    )
    tok.save_pretrained(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="scratch dir (gitignored)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--train-chars", type=int, default=5_500_000, help="train cap per domain")
    ap.add_argument("--heldout-chars", type=int, default=120_000, help="held-out cap per domain")
    ap.add_argument("--heldout-percent", type=int, default=8, help="share of files held out")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--eval-doc-chars", type=int, default=5_000, help="shipped eval text: cap per document")
    ap.add_argument("--eval-chars", type=int, default=400_000, help="shipped eval text: cap per domain")
    ap.add_argument("--eval-text-only", action="store_true", help="write only eval_text.txt (+ eval_manifest.json)")
    ap.add_argument("--eval-edition", type=int, choices=(1, 2), default=2, help="1: held-out files only (64 documents)")
    ap.add_argument("--eval-docs", type=int, default=128, help="edition 2: documents per domain")
    ap.add_argument("--extra-min-chars", type=int, default=2_000, help="edition 2: shortest added document")
    args = ap.parse_args()

    extract_dir = args.data / "extracted"
    debs = fetch_debs(args.data / "debs", extract_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    texts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    eval_docs: dict[str, list[tuple[str, str]]] = {}
    all_splits: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for domain in PACKAGES:
        splits = all_splits[domain] = collect(extract_dir, domain, args.heldout_percent)
        texts[("train", domain)] = take(splits["train"], args.train_chars)
        texts[("heldout", domain)] = take(splits["heldout"], args.heldout_chars)
        eval_docs[domain] = eval_documents(
            splits, domain, args.heldout_percent, doc_chars=args.eval_doc_chars, cap=args.eval_chars
        )
    candidates: dict[str, dict[str, list[tuple[str, str]]]] = {}
    extra: dict[str, dict[str, str]] = {}
    if args.eval_edition == 2:
        extra = fetch_extra(args.data / "debs", args.data / "extracted-extra")
        for domain in PACKAGES:
            beyond = [(rel, take([(rel, t)], args.eval_doc_chars)[0][1])
                      for rel, t in all_splits[domain]["train"][len(texts[("train", domain)]):]]
            beyond = [(rel, t) for rel, t in beyond if len(t) >= args.extra_min_chars]
            candidates[domain] = ({PACKAGES[domain]: beyond} if beyond else {}) | extra_candidates(
                args.data / "extracted-extra", domain, args.eval_doc_chars, args.extra_min_chars)
    train_texts = [t for d in PACKAGES for _, t in texts[("train", d)]]
    docs, rejected = extend_eval_documents(eval_docs, candidates, train_texts,
                                           per_domain=args.eval_docs if args.eval_edition == 2 else 0)
    for domain, ds in docs.items():  # the hash rule, once more, on what is written
        train_rels = {rel for rel, _ in texts[("train", domain)]}
        for x in ds:
            if x["package"] == PACKAGES[domain] and (x["path"] in train_rels or
                                                    (x["origin"] == "held-out") != (bucket(domain, x["path"]) % 100 < args.heldout_percent)):
                raise RuntimeError(f"{domain}:{x['path']} breaks the hash rule")
    from bh_routing.embedded import _overlap

    TRAIN_PASSAGES_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.save(TRAIN_PASSAGES_PATH, np.unique(np.concatenate([_overlap.winnow(_overlap.passage_hashes(t)) for t in train_texts])))
    eval_manifest = write_eval_text_v2(docs, {
        "_out": str(args.out),
        "edition": args.eval_edition,
        "doc_chars": args.eval_doc_chars,
        "origins": {"held-out": "in-package file held out by the hash rule",
                    "beyond-cap": "in-package file of the train split beyond the --train-chars cap (never in the training text)",
                    "other-package": "file of another Debian package (never in any training text)"},
        "training": {"packages": {**debs, "licence": LICENCE}, "heldout_percent": args.heldout_percent,
                     "train_chars": args.train_chars,
                     "train_files": {d: [rel for rel, _ in texts[("train", d)]] for d in PACKAGES}},
        "packages": extra,
        "overlap": {"passage_chars": _overlap.K, "min_alnum": _overlap.MIN_ALNUM, "winnow_window": _overlap.W,
                    "train_passages_file": TRAIN_PASSAGES_PATH.relative_to(ROOT).as_posix()},
        "rejected": rejected,
    })
    if args.eval_text_only:
        print(json.dumps({"debian_packages": {**debs, **extra}, "counts": eval_manifest["counts"],
                          "rejected": {d: len(r) for d, r in rejected.items()},
                          "chars": {d: sum(x["chars"] for x in ds) for d, ds in eval_manifest["documents"].items()}}, indent=1))
        return

    for (split, domain), docs in texts.items():
        body = f"\n{DOC_SEP}\n".join(t for _, t in docs)
        (args.out / f"{split}_{domain}.txt").write_text(body, encoding="utf-8")

    train_tokenizer(
        [t for d in PACKAGES for _, t in texts[("train", d)]], args.vocab_size, args.out / "tokenizer"
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.out / "tokenizer")
    n_tokens = {}
    for (split, domain), docs in texts.items():
        ids: list[int] = []
        for enc in tok([t for _, t in docs], add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
            ids.append(tok.eos_token_id)
        np.save(args.out / f"{split}_{domain}.npy", np.asarray(ids, dtype=np.uint16))
        n_tokens[f"{split}_{domain}"] = len(ids)

    manifest = {
        "licence": LICENCE,
        "debian_packages": debs,
        "sources": {d: f"{PACKAGES[d]}:/{SOURCE_GLOBS[d][0]}/**/{SOURCE_GLOBS[d][1]}" for d in PACKAGES},
        "args": {k: str(v) for k, v in vars(args).items()},
        "chars": {f"{s}_{d}": sum(len(t) for _, t in docs) for (s, d), docs in texts.items()},
        "tokens": n_tokens,
        "files": {f"{s}_{d}": [rel for rel, _ in docs] for (s, d), docs in texts.items()},
        "eval_text": eval_manifest,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    print(json.dumps({k: manifest[k] for k in ("debian_packages", "chars", "tokens")}, indent=1))


if __name__ == "__main__":
    main()
