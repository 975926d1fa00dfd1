"""Fuzz a real ``prewarm agent`` process (token auth) with 10,000 random and mutated messages.

Every RPC of ``gpu_agent.proto`` gets messages drawn from its descriptor (hostile values: huge and
negative numbers, NaN, unknown enum values, long and odd strings, mixed with the names, files and
digests the agent knows so that checks past the first are reached), valid Preloads of tiny files
under the allowed ``file://`` root mutated field by field (paths, sha256s, sizes, tiers,
deadlines, revisions, huge strings), operations on the models it holds (Attach, Release,
RenewLease, Evict, Status), and raw bytes: random, and valid messages with bytes flipped.

Every call must end with a status the proto's header documents (never UNKNOWN, INTERNAL or
UNIMPLEMENTED, which mean an unhandled exception or a broken handler; DEADLINE_EXCEEDED only as the
agent's own answer to a request's deadline, not a client timeout: a wedged agent fails the run),
health must stay SERVING, the agent process's resident memory (``VmRSS`` in
``/proc/<pid>/status``, of the agent process alone) must grow by less than 50 MB over the run, and
afterwards Status must agree with the disk and shared-memory tiers file for file: no orphan, no
``.partial``. A summary (messages per RPC, status codes, RSS, run time) is printed (``-s``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_agent.config import AgentConfig
from gpu_agent.diskcache import MANIFEST
from gpu_agent.tier_roots import MARKER
from protos import gpu_agent_pb2 as pb
from protos import gpu_agent_pb2_grpc as pb_grpc
from tests.harness.agent import sha256, write_model
from tests.harness.model_dirs import dir_sources, write_model_dir
from tests.harness.rpc import bearer, refusal_of

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

TOKEN = "fuzz-token-0123456789abcdef"
METADATA = bearer(TOKEN)
CODE = grpc.StatusCode
DOCUMENTED = {
    CODE.OK,
    CODE.INVALID_ARGUMENT,
    CODE.NOT_FOUND,
    CODE.PERMISSION_DENIED,
    CODE.DATA_LOSS,
    CODE.RESOURCE_EXHAUSTED,
    CODE.DEADLINE_EXCEEDED,
    CODE.FAILED_PRECONDITION,
    CODE.UNAVAILABLE,
}
"""The proto header's codes. UNAUTHENTICATED is documented too, but every call here carries the
valid token: seeing it would be a bug."""
BATCH = 10
"""Calls drawn per hypothesis example (drawing is the slow part; calls are cheap)."""
EXAMPLES = {"descriptor": 400, "preload": 300, "raw": 200, "holdings": 100}
"""Examples per phase: BATCH x (400 + 300 + 200 + 100) = 10,000 messages."""
RSS_GROWTH_LIMIT = 50 * 1024**2
CALL_TIMEOUT_S = 20.0
WATCH_CHECK_AFTER = 1
"""Watch streams never end on their own: each is checked one batch later (an answer by then is
its status, e.g. INVALID_ARGUMENT for bytes that do not decode) and cancelled otherwise."""

SERVICE = pb.DESCRIPTOR.services_by_name["GpuAgent"]
METHODS: dict[str, MethodDescriptor] = {m.name: m for m in SERVICE.methods}
_F = FieldDescriptor


# ------------------------------------------------------------------------------ the world


@dataclass
class World:
    """What the agent may load: tiny files under its allowed root, and the requests for them."""

    root: Path
    outside: Path
    files: list[Path]
    directory: Path
    model_ids: list[str] = field(default_factory=lambda: ["m0", "m1", "m2", "org/d0"])
    leases: set[str] = field(default_factory=set)

    def single(self, model_id: str, index: int) -> pb.PreloadRequest:
        path = self.files[index % len(self.files)]
        return pb.PreloadRequest(
            model_id=model_id,
            weights=[
                pb.Source(uri=path.as_uri(), sha256=sha256(path), size_bytes=path.stat().st_size)
            ],
            target_tier=pb.TIER_HOST,
            predicted_value=1.0,
        )

    def valid(self, index: int) -> pb.PreloadRequest:
        """One of a few valid Preloads (other files under one id: a new version each time)."""
        if index % 5 == 4:
            return pb.PreloadRequest(
                model_id="org/d0", weights=dir_sources(self.directory), target_tier=pb.TIER_HOST
            )
        return self.single(self.model_ids[index % 3], index)


def _world(tmp_path: Path) -> World:
    root = tmp_path / "models"
    files = [root / f"w{i}.safetensors" for i in range(4)]
    for index, path in enumerate(files):
        write_model(path, seed=index, numel=200)
    write_model_dir(root / "dir", seed=7)
    outside = tmp_path / "outside.safetensors"
    write_model(outside, seed=9, numel=200)
    (root / "escape.safetensors").symlink_to(outside)
    (root / "notes.bin").write_bytes(b"\x80\x02not a pickle the agent will ever load")
    return World(root=root, outside=outside, files=files, directory=root / "dir")


# ----------------------------------------------------------------------------- strategies


def _strings(world: World) -> st.SearchStrategy[str]:
    known = [
        *world.model_ids, "", "x" * 300, "a/b:c@d+e", "../..", world.files[0].as_uri(),
        "file:///etc/passwd", "http://127.0.0.1:9/m.safetensors", "0" * 64, "current",
    ]  # fmt: skip
    return st.sampled_from(known) | st.text(max_size=200)


def _scalar(world: World, field_: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field_.type
    if kind == _F.TYPE_STRING:
        return _strings(world)
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return st.floats() | st.sampled_from([0.0, 1.0, -1.0, 0.01, 60.0, 86_401.0, 1e300])
    if kind == _F.TYPE_ENUM:
        return st.integers(-3, 10)
    if kind in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5000)
    if kind in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if kind in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(0, 2**32 - 1)


@st.composite
def messages(draw: st.DrawFn, world: World, descriptor: Descriptor, depth: int = 0) -> Message:
    """A random message of type ``descriptor`` (fields set at random, nested up to depth 2)."""
    message = GetMessageClass(descriptor)()
    for field_ in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field_.message_type is not None:
            if depth >= 2:
                continue
            nested = messages(world, field_.message_type, depth + 1)
            if field_.is_repeated:
                for item in draw(st.lists(nested, max_size=2)):
                    getattr(message, field_.name).add().CopyFrom(item)
            else:
                getattr(message, field_.name).CopyFrom(draw(nested))
        elif field_.is_repeated:
            getattr(message, field_.name).extend(draw(st.lists(_scalar(world, field_), max_size=3)))
        else:
            setattr(message, field_.name, draw(_scalar(world, field_)))
    return message


Call = tuple[str, bytes]
"""A method name and the request bytes sent to it."""


def descriptor_calls(world: World) -> st.SearchStrategy[Call]:
    def one(name: str) -> st.SearchStrategy[Call]:
        method = METHODS[name]
        return messages(world, method.input_type).map(lambda m: (name, m.SerializeToString()))

    return st.sampled_from(sorted(METHODS)).flatmap(one)


def _timestamp(seconds: int, nanos: int = 0) -> Timestamp:
    stamp = Timestamp()
    stamp.seconds, stamp.nanos = seconds, nanos
    return stamp


def _mutations(world: World) -> dict[str, Callable[[pb.PreloadRequest, random.Random], None]]:
    """Named changes to a valid PreloadRequest (each leaves it malformed, refused or still
    valid); drawn by name so hypothesis reports which."""

    def source(request: pb.PreloadRequest, rng: random.Random) -> pb.Source:
        if not request.weights:
            return request.weights.add()
        return request.weights[rng.randrange(len(request.weights))]

    def uri(request: pb.PreloadRequest, rng: random.Random) -> None:
        choice = rng.choice([
            world.outside.as_uri(), (world.root / "escape.safetensors").as_uri(),
            (world.root / "missing.safetensors").as_uri(), world.root.as_uri() + "/../outside",
            world.root.as_uri() + "/%2e%2e/outside.safetensors", "file://host/x.safetensors",
            "http://127.0.0.1:9/w0.safetensors", "https://example.invalid/w.safetensors",
            "s3://bucket/key", "hf://org/name@main", "ftp://x/y", "not a uri", "",
            (world.root / "notes.bin").as_uri(), world.root.as_uri() + "/",
        ])  # fmt: skip
        source(request, rng).uri = choice

    def sha(request: pb.PreloadRequest, rng: random.Random) -> None:
        good = source(request, rng)
        good.sha256 = rng.choice([
            "", "abc", "g" * 64, "a" * 64, good.sha256.upper(), good.sha256[:-1],
            good.sha256 + "0", sha256(world.files[rng.randrange(len(world.files))]),
        ])  # fmt: skip

    def size(request: pb.PreloadRequest, rng: random.Random) -> None:
        source(request, rng).size_bytes = rng.choice([-1, 0, 1, 2**62, -(2**63), 2**63 - 1])

    def path(request: pb.PreloadRequest, rng: random.Random) -> None:
        source(request, rng).path = rng.choice([
            "../x", "/etc/passwd", "a//b", "./c", "a\\b", "x" * 600, "bad name", "ok.json",
            "dup.json", "y.partial", "config.json/inner", "tokenizer",
        ])  # fmt: skip

    def tier(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.target_tier = rng.choice([-1, 0, 1, 2, 3, 4, 99])  # type: ignore[assignment]

    def deadline(request: pb.PreloadRequest, rng: random.Random) -> None:
        now = int(time.time())
        request.deadline.CopyFrom(rng.choice([
            _timestamp(now - 10), _timestamp(now + 600), _timestamp(2**62),
            _timestamp(-(2**62)), _timestamp(now, -1), _timestamp(now, 2_000_000_000),
            _timestamp(253_402_300_799), _timestamp(-62_135_596_800), _timestamp(0),
        ]))  # fmt: skip

    def huge(request: pb.PreloadRequest, rng: random.Random) -> None:
        blob = rng.choice(["m" * 100_000, "é" * 50_000, "\x00" * 1000, "a/" * 40_000])
        target = rng.choice(["model_id", "uri", "sha256", "path", "gpu_uuid", "revision"])
        if target in ("uri", "sha256", "path"):
            setattr(source(request, rng), target, blob)
        else:
            setattr(request, target, blob)

    def many(request: pb.PreloadRequest, rng: random.Random) -> None:
        # Copies of a sound source (copies of a huge one would only test grpc's size cap).
        extra = world.single("m0", rng.randrange(len(world.files))).weights[0]
        for _ in range(rng.choice([2, 50, 2000])):
            request.weights.add().CopyFrom(extra)

    def value(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.predicted_value = rng.choice([-1.0, math.nan, math.inf, 1e308, 0.0])

    def revision(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.revision = rng.choice(["v2", "..", ".hidden", "current", "r" * 65, "a/b", "ok"])

    def pickle(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.allow_pickle = True
        source(request, rng).uri = (world.root / "notes.bin").as_uri()

    def artifact(request: pb.PreloadRequest, rng: random.Random) -> None:
        item = request.artifacts.add()
        item.source.uri = rng.choice([world.files[0].as_uri(), "file:///etc/passwd", ""])
        item.source.sha256 = rng.choice(["", sha256(world.files[0])])
        item.kind = rng.choice([0, 1, 2, 7])  # type: ignore[assignment]
        item.install_dir = rng.choice(["/etc", "", "relative", str(world.root.parent / "compile")])

    def gpu(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.gpu_uuid = rng.choice(["GPU-nope", "", "0"])

    def model(request: pb.PreloadRequest, rng: random.Random) -> None:
        request.model_id = rng.choice(["", "a b", "m\x00", "x" * 257, "m0", "org/d0", "e/../x"])

    def drop(request: pb.PreloadRequest, rng: random.Random) -> None:
        del request.weights[:]

    return {f.__name__: f for f in (uri, sha, size, path, tier, deadline, huge, many, value,
                                     revision, pickle, artifact, gpu, model, drop)}  # fmt: skip


def preload_calls(world: World) -> st.SearchStrategy[Call]:
    """Valid Preloads (about one in six) and valid ones with one to three mutations."""
    mutations = _mutations(world)

    def build(index: int, names: list[str], seed: int) -> Call:
        request = world.valid(index)
        rng = random.Random(seed)
        for name in names:
            mutations[name](request, rng)
        return "Preload", request.SerializeToString()

    names = st.lists(st.sampled_from(sorted(mutations)), max_size=3)
    names = st.one_of(st.just([]), names, names, names, names, names)
    return st.builds(build, st.integers(0, 99), names, st.integers(0, 2**32))


def raw_calls(world: World) -> st.SearchStrategy[Call]:
    """Random bytes, and valid messages with a few bytes flipped, cut or repeated."""

    def flipped(name: str, index: int, seed: int) -> Call:
        if name == "Preload":
            data = bytearray(world.valid(index).SerializeToString())
        else:
            valid = GetMessageClass(METHODS[name].input_type)()
            if name in ("Evict", "Attach"):
                valid.model_id = world.model_ids[index % 4]
            data = bytearray(valid.SerializeToString())
        rng = random.Random(seed)
        if not data:
            data = bytearray(rng.randbytes(8))
        how = rng.randrange(3)
        if how == 0:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            data = data[: rng.randrange(len(data))]
        else:
            data = data + data[: rng.randint(1, len(data))]
        return name, bytes(data)

    methods = st.sampled_from(sorted(METHODS))
    random_bytes = st.tuples(methods, st.binary(max_size=300))
    return random_bytes | st.builds(flipped, methods, st.integers(0, 99), st.integers(0, 2**32))


def holding_calls(world: World) -> st.SearchStrategy[Call]:
    """Operations on what the agent holds: attach (often with a TTL), release and renew the
    leases it handed out, evict (forced or not), status."""

    def build(kind: str, index: int, flag: bool, ttl: float) -> Call:
        model_id = world.model_ids[index % 4]
        leases = sorted(world.leases)
        lease_id = leases[index % len(leases)] if leases else "no-lease"
        if kind == "Attach":
            max_tier = (pb.TIER_UNSPECIFIED, pb.TIER_DISK, pb.TIER_HOST, pb.TIER_GPU)[index % 4]
            request: Message = pb.AttachRequest(model_id=model_id, max_tier=max_tier,
                                                client_pid=index, lease_ttl_s=ttl,
                                                lease_only=flag)  # fmt: skip
        elif kind == "Evict":
            request = pb.EvictRequest(model_id=model_id, force=flag, tier=index % 4)  # type: ignore[arg-type]
        elif kind == "Release":
            request = pb.ReleaseRequest(lease_id=lease_id)
        elif kind == "RenewLease":
            request = pb.RenewLeaseRequest(lease_id=lease_id)
        elif kind == "Preload":
            request = world.valid(index)
        else:
            request = pb.StatusRequest()
        return kind, request.SerializeToString()

    kinds = st.sampled_from(["Attach", "Attach", "Evict", "Release", "RenewLease", "Preload",
                             "Status"])  # fmt: skip
    ttls = st.sampled_from([0.0, 0.05, 0.5, 30.0])
    return st.builds(build, kinds, st.integers(0, 999), st.booleans(), ttls)


# ------------------------------------------------------------------------------- the calls


@dataclass
class Tally:
    """What the run saw."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    codes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    watches: list[tuple[int, grpc.Future]] = field(default_factory=list)  # type: ignore[type-arg]
    loads: int = 0
    """Preloads that loaded something (their DONE is not "already held")."""
    batch: int = 0

    def record(self, name: str, code: grpc.StatusCode, details: str, payload: bytes) -> None:
        self.codes[(name, code.name)] += 1
        assert code in DOCUMENTED, (name, code, details, payload[:300])
        if code == CODE.DEADLINE_EXCEEDED:
            # Only the agent's own answer to a request's deadline: a client-side timeout (a
            # wedged agent) has grpc's bare "Deadline Exceeded".
            assert name == "Preload", (details, payload[:300])
            assert "deadline" in details.lower(), (details, payload[:300])
            assert details != "Deadline Exceeded", payload[:300]


def _invoke(channel: grpc.Channel, world: World, tally: Tally, call: Call) -> None:
    name, payload = call
    path = f"/{SERVICE.full_name}/{name}"
    tally.sent[name] += 1
    if name == "Watch":
        stream = channel.unary_stream(path)(payload, metadata=METADATA, timeout=CALL_TIMEOUT_S)
        tally.watches.append((tally.batch, stream))
        return
    try:
        if name == "Preload":
            stream = channel.unary_stream(path)(payload, metadata=METADATA, timeout=CALL_TIMEOUT_S)
            done = pb.PreloadProgress.FromString(collections.deque(stream, maxlen=1)[0])
            assert done.stage == pb.PreloadProgress.STAGE_DONE, done
            tally.loads += done.message != "already held"
        else:
            answer = channel.unary_unary(path)(payload, metadata=METADATA, timeout=CALL_TIMEOUT_S)
            if name == "Attach":
                world.leases.add(pb.AttachResponse.FromString(answer).lease_id)
            elif name == "Release":
                world.leases.discard(pb.ReleaseRequest.FromString(payload).lease_id)
    except grpc.RpcError as error:
        refusal = refusal_of(error)
        tally.record(name, refusal.code, refusal.details, payload)
    else:
        tally.record(name, CODE.OK, "", payload)


def _settle_watches(tally: Tally, *, all_: bool = False) -> None:
    """Read the Watch streams opened a batch ago: their status if they ended, else cancel them."""
    keep = []
    for batch, stream in tally.watches:
        if not all_ and tally.batch - batch < WATCH_CHECK_AFTER:
            keep.append((batch, stream))
            continue
        if stream.done():
            code = stream.code()
            tally.record("Watch", code, stream.details() or "", b"")
        else:
            stream.cancel()
            tally.codes[("Watch", "open (cancelled)")] += 1
    tally.watches = keep


def _run_phase(
    channel: grpc.Channel,
    world: World,
    tally: Tally,
    strategy: st.SearchStrategy[Call],
    examples: int,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(strategy, min_size=BATCH, max_size=BATCH))
    def batch(calls: list[Call]) -> None:
        tally.batch += 1
        for call in calls:
            _invoke(channel, world, tally, call)
        _settle_watches(tally)

    batch()


# ------------------------------------------------------------------------------- checking


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MARKER}


def _check_tiers_agree(channel: grpc.Channel, config: AgentConfig) -> pb.StatusResponse:
    """Status against the files: every complete model directory is a held model and the other
    way round, the host tier holds exactly the held models' copies, the byte counts match, and
    no partial file is anywhere."""
    stub = pb_grpc_stub(channel)
    status = stub.Status(pb.StatusRequest(), metadata=METADATA, timeout=10)
    cache, shm = Path(config.cache_dir), Path(config.shm_dir)
    partials = [p for p in (*cache.rglob("*"), *shm.rglob("*")) if ".partial" in p.name]
    assert partials == []
    held = {m.model_id: m for m in status.models}
    on_disk: dict[str, Path] = {}
    for directory in (cache / "models").iterdir():
        manifest = json.loads((directory / MANIFEST).read_text())  # none incomplete or retired
        assert manifest["model_id"] not in on_disk, directory
        on_disk[manifest["model_id"]] = directory
    assert set(on_disk) == set(held)
    disk_files = set().union(*(_files(d) for d in on_disk.values())) if on_disk else set()
    assert _files(cache / "models") == disk_files
    expected_host: set[Path] = set()
    for model_id, holding in held.items():
        if holding.tier < pb.TIER_HOST:
            continue
        if holding.model_dir:
            expected_host |= _files(Path(holding.model_dir))
            continue
        lease = stub.Attach(pb.AttachRequest(model_id=model_id, max_tier=pb.TIER_HOST,
                                             lease_ttl_s=60),
                            metadata=METADATA, timeout=10)  # fmt: skip
        expected_host |= {Path(f.path) for f in lease.files}
        stub.Release(pb.ReleaseRequest(lease_id=lease.lease_id), metadata=METADATA, timeout=10)
    assert _files(shm) == expected_host
    usage = {t.tier: t for t in status.tiers}
    assert usage[pb.TIER_HOST].used_bytes == sum(p.stat().st_size for p in expected_host)
    disk_bytes = sum(p.stat().st_size for p in disk_files if p.name != MANIFEST)
    assert usage[pb.TIER_DISK].used_bytes == disk_bytes
    return status


def pb_grpc_stub(channel: grpc.Channel) -> pb_grpc.GpuAgentStub:
    return pb_grpc.GpuAgentStub(channel)


@contextlib.contextmanager
def _agent_process(config: AgentConfig, workdir: Path) -> Iterator[tuple[int, int]]:
    """``python -m prewarm agent`` with ``config`` (no CUDA, log in ``workdir``): pid and port."""
    workdir.mkdir(parents=True)
    config_file = workdir / "prewarm.yaml"
    config_file.write_text(yaml.safe_dump({"agent": config.model_dump(mode="json")}))
    port_file = workdir / "port"
    with (workdir / "agent.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prewarm", "--config", str(config_file), "agent",
             "--port-file", str(port_file)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((workdir / "agent.log").read_text(errors="replace")[-3000:])
            time.sleep(0.05)
        yield process.pid, int(port_file.read_text())
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


@contextlib.contextmanager
def _agent(tmp_path: Path, world: World) -> Iterator[tuple[int, int, AgentConfig]]:
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    config = AgentConfig.model_validate(
        {
            "listen": "127.0.0.1:0",
            "metrics_port": None,
            "cache_dir": str(tmp_path / "cache"),
            "shm_dir": str(tmp_path / "shm"),
            "headroom_bytes": 1000,
            "host_headroom_bytes": 0,
            "host_max_bytes": 64 * 1024,
            "disk_headroom_bytes": 0,
            "allowed_schemes": ["file", "http"],
            "allowed_file_roots": [str(world.root)],
            "allowed_http_prefixes": ["http://127.0.0.1:9/"],
            "allowed_install_roots": [str(tmp_path / "compile")],
            "http_timeout_s": 2.0,
            "chunk_bytes": 1024**2,
            "copy_workers": 2,
            "shutdown_grace_s": 0.5,
            "auth": {"mode": "token", "token_file": str(token_file)},
        }
    )
    with _agent_process(config, tmp_path / "run") as (pid, port):
        yield pid, port, config


def test_ten_thousand_hostile_messages(tmp_path: Path) -> None:
    world = _world(tmp_path)
    tally = Tally()
    started = time.monotonic()
    with _agent(tmp_path, world) as (pid, port, config):
        options = [("grpc.max_send_message_length", 64 * 1024**2)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = pb_grpc_stub(channel)
            with pytest.raises(grpc.RpcError) as anonymous:
                stub.Status(pb.StatusRequest(), timeout=10)
            assert anonymous.value.code() == CODE.UNAUTHENTICATED  # type: ignore[attr-defined]
            stub.Status(pb.StatusRequest(), metadata=METADATA, timeout=10)
            rss_start = _rss_bytes(pid)
            rss_after: dict[str, int] = {}
            phase_s: dict[str, float] = {}
            phases = {
                "descriptor": descriptor_calls(world),
                "preload": preload_calls(world),
                "raw": raw_calls(world),
                "holdings": holding_calls(world),
            }
            for phase, strategy in phases.items():
                phase_start = time.monotonic()
                _run_phase(channel, world, tally, strategy, EXAMPLES[phase])
                phase_s[phase] = time.monotonic() - phase_start
                rss_after[phase] = _rss_bytes(pid)
            _settle_watches(tally, all_=True)
            rss_end = _rss_bytes(pid)

            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # End every lease handed out (expired ones are NOT_FOUND), then compare.
            for lease_id in sorted(world.leases):
                with contextlib.suppress(grpc.RpcError):
                    stub.Release(pb.ReleaseRequest(lease_id=lease_id), metadata=METADATA,
                                 timeout=10)  # fmt: skip
            # One sound load still goes through at the end: nothing is wedged.
            done = list(stub.Preload(world.single("m0", 0), metadata=METADATA, timeout=30))
            assert done[-1].stage == pb.PreloadProgress.STAGE_DONE
            status = _check_tiers_agree(channel, config)
    elapsed = time.monotonic() - started
    total = sum(tally.sent.values())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in phase_s.items())
    print(f"\nagent fuzz: {total} messages in {elapsed:.1f} s (agent start-up included; {timing})")
    print("per RPC:", dict(sorted(tally.sent.items())))
    print("status codes:", dict(sorted(tally.codes.items())))
    phases = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in rss_after.items())
    print(f"agent VmRSS: {rss_start / 2**20:.1f} MiB -> {rss_end / 2**20:.1f} MiB ({phases})")
    print(f"preloads that loaded something: {tally.loads}")
    print("held at the end:", sorted((m.model_id, m.tier) for m in status.models))
    assert total >= 10_000
    assert set(tally.sent) == set(METHODS)
    codes = {code for _, code in tally.codes}
    assert "UNKNOWN" not in codes
    assert "INTERNAL" not in codes
    # Valid Preloads of tiny files went through, many of them loading a new version.
    assert tally.codes[("Preload", "OK")] >= 100, tally.codes
    assert tally.loads >= 50, tally.loads
    assert rss_end - rss_start < RSS_GROWTH_LIMIT
