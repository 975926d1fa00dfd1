"""A serving process with HF transformers on CPU, run by tests/acceptance/test_engines.py.

Usage:

- ``python -m tests.acceptance.engine_child make DIR``: write a tiny GPT-2 model directory
  (config, generation config, a byte-level BPE tokenizer trained here from a few sentences, no
  Hub; the weights as two safetensors shards with their index). Prints its files as JSON.
- ``... serve --model-dir PATH``: what an engine started with ``--model PATH`` does: load the
  tokenizer and model from that directory (``from_pretrained``), answer one generate request.
- ``... serve --source BASE_URL --files JSON``: the same engine without prewarm: download every
  file of the directory from its source, verify each sha256, then load and answer.
- ``... serve --s3 s3://bucket/prefix/ --s3-endpoint URL``: the same from an S3 server (credentials
  from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``): list the prefix (ListObjectsV2 and a HEAD
  per object, for its stored SHA256 checksum), GET every object with a presigned SigV4 URL (the
  agent's own :mod:`gpu_agent.remote` code, no boto3), verify each sha256, then load and answer.

``serve`` prints one JSON line: the seconds from the start of the load to the first response
(the interpreter's start and imports excluded: they are the same either way), the generated text,
and where the model came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROMPT = "the quick brown fox"
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a warm copy of the model waits in shared memory",
    "serving engines start from the directory the agent holds",
]


def make(directory: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    eos = fast.convert_tokens_to_ids("<eos>")
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Just over half the weights per shard: exactly two shards and an index.
    model.save_pretrained(directory, max_shard_size=f"{nbytes * 6 // 10 // 1000}KB")
    fast.save_pretrained(directory)
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    print(json.dumps({"files": files, "parameters": sum(p.numel() for p in model.parameters())}))


def _download(base_url: str, files: list[dict[str, str]], into: Path) -> None:
    for item in files:
        with urllib.request.urlopen(base_url + item["path"], timeout=60) as response:
            blob = response.read()
        if hashlib.sha256(blob).hexdigest() != item["sha256"]:
            raise SystemExit(f"checksum mismatch for {item['path']}")
        dest = into / item["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(blob)


def _download_s3(uri: str, endpoint: str, into: Path) -> None:
    import requests

    from gpu_agent.config import S3SourcesConfig
    from gpu_agent.remote import s3

    config = S3SourcesConfig(endpoint=endpoint, region=os.environ.get("AWS_REGION", "us-east-1"))
    with requests.Session() as session:
        client = s3.S3Client(config, session=session, environ=os.environ)
        for item in client.expand(s3.parse_s3_uri(uri)):
            response = session.get(item.url, timeout=60)
            response.raise_for_status()
            blob = response.content
            if item.sha256 is None or hashlib.sha256(blob).hexdigest() != item.sha256:
                raise SystemExit(f"checksum mismatch (or no stored checksum) for {item.uri}")
            dest = into / item.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)


def serve(args: argparse.Namespace) -> None:
    import torch

    # transformers imports each architecture's modules lazily, at its first use: do that before
    # the clock starts, as for the other imports (the same cost whichever way the model comes).
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    if args.s3:
        # The S3 client's modules (requests, the SigV4 signer) are imported before the clock
        # starts too, like the others.
        import requests  # noqa: F401

        from gpu_agent.remote import s3  # noqa: F401

    torch.set_num_threads(1)
    started = time.perf_counter()
    scratch = None
    if args.model_dir:
        directory, origin = Path(args.model_dir), "warm"
    else:
        scratch = tempfile.TemporaryDirectory(prefix="engine-download-")
        directory = Path(scratch.name)
        if args.s3:
            origin = "s3"
            _download_s3(args.s3, args.s3_endpoint, directory)
        else:
            origin = "source"
            _download(args.source, json.loads(args.files), directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    seconds = time.perf_counter() - started
    if scratch is not None:
        scratch.cleanup()
    report = {"origin": origin, "seconds": seconds, "text": text, "directory": str(directory)}
    print(json.dumps(report), flush=True)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the network
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make")
    make_parser.add_argument("directory", type=Path)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--model-dir", default="")
    serve_parser.add_argument("--source", default="")
    serve_parser.add_argument("--files", default="[]")
    serve_parser.add_argument("--s3", default="")
    serve_parser.add_argument("--s3-endpoint", default="")
    args = parser.parse_args()
    if args.command == "make":
        make(args.directory)
    else:
        serve(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
