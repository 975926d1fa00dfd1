"""Image references resolved as a container runtime resolves them, and compared with the names a
kubelet reports in ``status.images`` (pure; no cluster).

The expected values follow the Docker reference grammar containerd, CRI-O and the kubelet share
(``github.com/distribution/reference``: ``ParseNormalizedNamed``, ``TagNameOnly``)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from actuator.images import (
    ImageReference,
    InvalidImageReference,
    canonical_image,
    holds_image,
    node_has_image,
    parse_image,
    reported_images,
)
from common.errors import InvalidInput

SHA = "sha256:" + "0123456789abcdef" * 4
OTHER_SHA = "sha256:" + "fedcba9876543210" * 4


@pytest.mark.parametrize(
    ("reference", "canonical"),
    [
        # Docker Hub: default registry, "library/" for official images, default tag.
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.27", "docker.io/library/nginx:1.27"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/vllm/vllm-openai:v0.9", "docker.io/vllm/vllm-openai:v0.9"),
        ("vllm/vllm-openai:v0.9", "docker.io/vllm/vllm-openai:v0.9"),
        # A first component without '.' or ':' and not "localhost" is a Docker Hub namespace.
        ("team/sub/model", "docker.io/team/sub/model:latest"),
        # Other registries: taken as written, no "library/".
        ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
        ("ghcr.io/img:2", "ghcr.io/img:2"),
        ("nvcr.io/nvidia/tritonserver:24.08-py3", "nvcr.io/nvidia/tritonserver:24.08-py3"),
        # Ports and localhost: the ':' before the first '/' is a port, not a tag.
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),
        ("localhost/x", "localhost/x:latest"),
        ("registry.internal:443/team/model:v2", "registry.internal:443/team/model:v2"),
        ("[::1]:5000/x:3", "[::1]:5000/x:3"),
        # Digests: the image is the digest, a tag next to it is ignored.
        (f"nginx@{SHA}", f"docker.io/library/nginx@{SHA}"),
        (f"nginx:1.27@{SHA}", f"docker.io/library/nginx@{SHA}"),
        (f"localhost:5000/x@{SHA}", f"localhost:5000/x@{SHA}"),
        # Separators inside path components.
        ("my.registry/a__b/c-d.e_f:t", "my.registry/a__b/c-d.e_f:t"),
        ("a---b", "docker.io/library/a---b:latest"),
    ],
)
def test_references_resolve_as_a_runtime_does(reference: str, canonical: str) -> None:
    assert canonical_image(reference) == canonical
    # Idempotent: the canonical form resolves to itself.
    assert canonical_image(canonical) == canonical


def test_parts_of_a_reference() -> None:
    ref = parse_image(f"localhost:5000/team/model:v1@{SHA}")
    assert ref == ImageReference("localhost:5000", "team/model", "v1", SHA)
    assert ref.name == "localhost:5000/team/model"
    assert parse_image("nginx") == ImageReference("docker.io", "library/nginx")


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("", "empty"),
        (" nginx", "blanks"),
        ("nginx ", "blanks"),
        ("Nginx", "lower case"),
        ("docker.io/Library/nginx", "lower case"),
        ("nginx:", "not a tag"),
        ("nginx:-bad", "not a tag"),
        ("nginx:" + "t" * 129, "not a tag"),
        ("nginx@sha256:abc", "64 hex digits"),
        ("nginx@sha256:" + "g" * 64, "not a digest"),
        ("nginx@", "not a digest"),
        ("nginx@latest", "not a digest"),
        ("/nginx", "repository path component"),
        ("ghcr.io//x", "repository path component"),
        ("ghcr.io/x/", "repository path component"),
        ("a/-b", "repository path component"),
        ("a/b_", "repository path component"),
        ("a/b...c", "repository path component"),
        ("bad_host:5000/x", "not a registry"),
        ("-host.io/x", "not a registry"),
        ("ghcr.io/", "repository path component"),
        (":tag", "no repository name"),
        ("0123456789abcdef" * 4, "image id"),
        ("ghcr.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_bad_references_are_refused_with_the_reason(reference: str, problem: str) -> None:
    with pytest.raises(InvalidImageReference, match=problem) as raised:
        parse_image(reference)
    assert isinstance(raised.value, InvalidInput)  # maps to INVALID_ARGUMENT / "fix the input"
    assert repr(reference) in str(raised.value)  # the message names the offending reference


def node(*names: list[str]) -> dict[str, object]:
    """A Node whose kubelet reports one image per list of names."""
    return {"status": {"images": [{"names": n, "sizeBytes": 1} for n in names]}}


# How containerd reports an image pulled as "nginx:1.27": fully qualified, by tag and by digest.
CONTAINERD = node(
    [f"docker.io/library/nginx@{SHA}", "docker.io/library/nginx:1.27"],
    ["registry.k8s.io/pause:3.10"],
)


@pytest.mark.parametrize(
    ("reference", "held"),
    [
        ("nginx:1.27", True),
        ("library/nginx:1.27", True),
        ("index.docker.io/library/nginx:1.27", True),
        ("docker.io/library/nginx:1.27", True),
        (f"nginx@{SHA}", True),
        (f"nginx:whatever@{SHA}", True),  # by digest: the tag does not matter
        (f"nginx@{OTHER_SHA}", False),
        ("nginx", False),  # latest is not 1.27
        ("nginx:1.26", False),
        ("ghcr.io/library/nginx:1.27", False),  # another registry is another image
        ("pause:3.10", False),  # docker.io/library/pause is not registry.k8s.io/pause
        ("registry.k8s.io/pause:3.10", True),
    ],
)
def test_node_status_names_are_compared_normalised(reference: str, held: bool) -> None:
    assert node_has_image(CONTAINERD, parse_image(reference)) is held


def test_short_names_reported_by_older_runtimes_match_too() -> None:
    # Docker-based nodes (dockershim, cri-dockerd) report names as they were pulled.
    docker = node(["nginx:1.27", f"nginx@{SHA}"], ["localhost:5000/x:1"])
    assert node_has_image(docker, parse_image("docker.io/library/nginx:1.27"))
    assert node_has_image(docker, parse_image(f"docker.io/library/nginx@{SHA}"))
    assert node_has_image(docker, parse_image("localhost:5000/x:1"))
    assert not node_has_image(docker, parse_image("localhost:5001/x:1"))  # another port


def test_unparseable_node_names_match_nothing() -> None:
    # Some runtimes list an image by its bare id, or an untagged "<none>" entry.
    odd = ["<none>@<none>", "<none>:<none>", ""]
    assert reported_images(odd) == []
    odd.append("sha256:" + "ab" * 32)  # parses (repository "sha256"), and names no real image
    assert not node_has_image(node(odd), parse_image("nginx"))
    assert not node_has_image({"status": {}}, parse_image("nginx"))
    assert not node_has_image({}, parse_image("nginx"))


def test_a_tag_reference_never_matches_a_digest_only_name() -> None:
    # A node that lists only repo@digest has some version of the repo; which tag is unknown.
    assert not holds_image(reported_images([f"nginx@{SHA}"]), parse_image("nginx:1.27"))


_COMPONENT = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_REGISTRY = st.sampled_from(["", "docker.io/", "index.docker.io/", "ghcr.io/", "localhost:5000/"])


@settings(max_examples=60)
@given(
    registry=_REGISTRY,
    path=st.lists(_COMPONENT, min_size=1, max_size=3),
    tag=st.one_of(st.none(), _TAG),
    digest=st.one_of(st.none(), st.just(SHA)),
)
def test_every_spelling_resolves_to_one_canonical_name(
    registry: str, path: list[str], tag: str | None, digest: str | None
) -> None:
    # Without a registry, a first component with a '.' is read as a host (as runtimes do).
    assume(registry or len(path) == 1 or "." not in path[0])
    reference = registry + "/".join(path)
    if tag is not None:
        reference += f":{tag}"
    if digest is not None:
        reference += f"@{digest}"
    ref = parse_image(reference)
    canonical = ref.canonical
    again = parse_image(canonical)
    assert again.canonical == canonical
    assert ref.same_image(again)
    assert again.same_image(ref)
    # A node reporting the reference as written holds the image named canonically, and back.
    assert holds_image(reported_images([reference]), again)
    assert holds_image(reported_images([canonical]), ref)
