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

Usage::

    python scripts/prepare_corpus.py                  # apt-get download + dpkg-deb -x into data/
    python scripts/prepare_corpus.py --eval-text-only # only eval_text.txt: no tokenizer, no .npy
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


def fetch_debs(deb_dir: Path, extract_dir: Path) -> dict[str, dict[str, str]]:
    """Download the two Debian packages (if absent) and extract them; return name -> version/sha."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, str]] = {}
    for package in PACKAGES.values():
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
    args = ap.parse_args()

    extract_dir = args.data / "extracted"
    debs = fetch_debs(args.data / "debs", extract_dir)
    args.out.mkdir(parents=True, exist_ok=True)

    texts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    eval_docs: dict[str, list[tuple[str, str]]] = {}
    for domain in PACKAGES:
        splits = collect(extract_dir, domain, args.heldout_percent)
        texts[("train", domain)] = take(splits["train"], args.train_chars)
        texts[("heldout", domain)] = take(splits["heldout"], args.heldout_chars)
        eval_docs[domain] = eval_documents(
            splits, domain, args.heldout_percent, doc_chars=args.eval_doc_chars, cap=args.eval_chars
        )
    eval_manifest = write_eval_text(eval_docs, args.out)
    if args.eval_text_only:
        print(json.dumps({"debian_packages": debs, "documents": {d: len(f) for d, f in eval_manifest["files"].items()},
                          "chars": {d: sum(c) for d, c in eval_manifest["chars"].items()}}, indent=1))
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
