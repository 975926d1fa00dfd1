"""Container image references, resolved the way a container runtime resolves them.

Owns: parsing an image reference (``nginx``, ``vllm/vllm-openai:v0.9``,
``localhost:5000/team/model@sha256:<64 hex>``) into registry, repository, tag and digest with the
defaults a runtime applies, and deciding whether a node already holds an image from the names its
kubelet reports in ``status.images``. Pure functions; must not read the API.

The rules follow the Docker reference grammar that containerd, CRI-O and the kubelet share
(``github.com/distribution/reference``), written here from its documented behaviour:

- The part before the first ``/`` is a registry only when it contains a ``.`` or a ``:`` (a port)
  or is ``localhost``, and has no upper-case letter; otherwise the whole name is a Docker Hub
  repository. ``index.docker.io`` is the old name of ``docker.io``.
- A Docker Hub repository with a single path component is an official image: ``library/`` is
  prepended (``nginx`` is ``docker.io/library/nginx``).
- No tag and no digest means ``:latest``. With a digest the image is identified by the digest
  alone: a runtime pulls ``repo:tag@sha256:...`` by digest and ignores the tag.
- Repository path components are lower-case; a reference that breaks the grammar (upper case,
  empty components, a 64-hex "name" that is really an image id, a malformed digest) is refused
  with :class:`InvalidImageReference`, which says what is wrong.

Node status: the kubelet lists each image under every name the runtime has for it, both
``repo:tag`` and ``repo@sha256:...`` (containerd reports them fully qualified,
``docker.io/library/nginx:1.27``; older Docker-based nodes report them as pulled, ``nginx:1.27``),
so node names are normalised with the same rules before comparing; a name that does not parse
(e.g. ``<none>:<none>`` of an untagged image) simply matches nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidInput

DOCKER_HUB = "docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
_MAX_NAME = 255

# A registry host: DNS labels separated by dots, or a bracketed IPv6 address, then an optional
# port. Host names may carry upper case (DNS is case-insensitive); repositories may not.
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
# One repository path component: lower-case alphanumerics joined by ".", "_", "__" or dashes.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
# Digest algorithms whose length is known: a sha256 digest that is not 64 hex digits is a typo.
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_IMAGE_ID = re.compile(r"^[a-f0-9]{64}$")


class InvalidImageReference(InvalidInput):
    """An image reference that no container runtime would accept; fix the name (catalog
    ``image``)."""


@dataclass(frozen=True, slots=True, order=True)
class ImageReference:
    """A normalised reference: ``registry/repository`` plus a tag or a digest (or both).

    ``digest`` set means the image is the one with that digest, whatever ``tag`` says.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, e.g. ``docker.io/library/nginx``."""
        return f"{self.registry}/{self.repository}"

    @property
    def canonical(self) -> str:
        """The one string every spelling of this image maps to: ``name@digest`` when pinned by
        digest, else ``name:tag``."""
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def same_image(self, other: ImageReference) -> bool:
        """Whether ``other`` names this image: same repository, and the same digest when this
        reference has one, else the same tag."""
        if self.name != other.name:
            return False
        if self.digest is not None:
            return other.digest == self.digest
        return other.digest is None and (other.tag or DEFAULT_TAG) == (self.tag or DEFAULT_TAG)


def parse_image(reference: str) -> ImageReference:
    """``reference`` normalised as a runtime does (see the module docstring).

    Raises :class:`InvalidImageReference` naming the problem when it is not a valid reference.
    """
    text = reference.strip()
    if not text or text != reference:
        raise InvalidImageReference(f"image reference {reference!r} is empty or has blanks")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidImageReference(
                f"image reference {reference!r}: {digest!r} is not a digest "
                "(expected algorithm:hex, e.g. sha256:<64 hex digits>)"
            )
        algorithm, hex_digits = digest.split(":", 1)
        expected = _DIGEST_HEX.get(algorithm)
        if expected is not None and len(hex_digits) != expected:
            raise InvalidImageReference(
                f"image reference {reference!r}: a {algorithm} digest has {expected} hex digits, "
                f"not {len(hex_digits)}"
            )
    tag = None
    # A tag follows the last ':' after the last '/' (an earlier ':' is a registry's port).
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidImageReference(
                f"image reference {reference!r}: {tag!r} is not a tag (letters, digits, '_', '.' "
                "and '-', at most 128, not starting with '.' or '-')"
            )
    if not remainder:
        raise InvalidImageReference(f"image reference {reference!r} has no repository name")
    if len(remainder) > _MAX_NAME:
        raise InvalidImageReference(
            f"image reference {reference!r}: the name is longer than {_MAX_NAME} characters"
        )
    registry, repository = _split_registry(remainder)
    if registry is None:
        if _IMAGE_ID.match(remainder):
            raise InvalidImageReference(
                f"image reference {reference!r} is a 64-hex image id, not a repository name"
            )
        registry = DOCKER_HUB
    elif not _DOMAIN.match(registry):
        raise InvalidImageReference(
            f"image reference {reference!r}: {registry!r} is not a registry host[:port]"
        )
    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    for component in repository.split("/"):
        if not _COMPONENT.match(component):
            hint = " (repository names are lower case)" if component.lower() != component else ""
            raise InvalidImageReference(
                f"image reference {reference!r}: {component!r} is not a valid repository path "
                f"component{hint}"
            )
    if registry == DOCKER_HUB and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_registry(name: str) -> tuple[str | None, str]:
    """(registry or None for Docker Hub, repository path) of a name without tag or digest."""
    first, slash, rest = name.partition("/")
    if not slash:
        return None, name
    looks_like_host = ("." in first or ":" in first or first == "localhost") or (
        first.lower() != first  # upper case cannot be a repository, so it is a host
    )
    return (first, rest) if looks_like_host else (None, name)


def canonical_image(reference: str) -> str:
    """``reference`` as a runtime resolves it: ``nginx``, ``library/nginx:latest`` and
    ``index.docker.io/library/nginx`` are all ``docker.io/library/nginx:latest``.

    Raises :class:`InvalidImageReference` when it is not a valid reference.
    """
    return parse_image(reference).canonical


def reported_images(names: Iterable[str]) -> list[ImageReference]:
    """The parseable names among those a kubelet reports for a node's images (see module
    docstring; names that do not parse, such as ``<none>:<none>``, are left out)."""
    found: list[ImageReference] = []
    for name in names:
        reference = _parse_reported(name)
        if reference is not None:
            found.append(reference)
    return found


@functools.lru_cache(maxsize=8192)
def _parse_reported(name: str) -> ImageReference | None:
    # Every node of a pool reports much the same names, every tick: parse each name once.
    try:
        return parse_image(name)
    except InvalidImageReference:
        return None


def node_image_names(node: Mapping[str, Any]) -> list[str]:
    """Every name under which ``node``'s ``status.images`` lists an image (the kubelet reports
    at most ``--node-status-max-images``, 50 by default, largest first)."""
    names: list[str] = []
    for entry in (node.get("status") or {}).get("images") or []:
        names.extend(str(name) for name in entry.get("names") or [])
    return names


def holds_image(reported: Iterable[ImageReference], image: ImageReference) -> bool:
    """Whether a node whose images parse to ``reported`` already holds ``image``."""
    return any(image.same_image(other) for other in reported)


def node_has_image(node: Mapping[str, Any], image: ImageReference) -> bool:
    """Whether ``node`` (a Node object) reports ``image`` in ``status.images``."""
    return holds_image(reported_images(node_image_names(node)), image)
