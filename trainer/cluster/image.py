"""Container image references for `trainer.launch`: a tag resolved to its digest (the registry's v2 API)."""

import base64
import re
import urllib.error
import urllib.parse
import urllib.request

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
# The hosts that take a Google access token (as user oauth2accesstoken): gcr.io and its
# subdomains (us.gcr.io, ...) and Artifact Registry's LOCATION-docker.pkg.dev. Whole host names,
# so that a look-alike (evilgcr.io, gcr.io.evil.com) never receives the token.
GOOGLE_REGISTRY_HOST = re.compile(r"(?:[a-z0-9-]+\.)*gcr\.io|[a-z0-9-]+-docker\.pkg\.dev")


class UnresolvedImage(Exception):
    """The registry gave no digest for the tag (or could not be reached): pass the image by digest instead."""


def split_image(image: str) -> tuple:
    """(registry, repository, tag) of an image reference, Docker's defaults filled in."""
    name, tag = image, "latest"
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "registry-1.docker.io", name if rest else f"library/{name}", tag


def is_google_registry(registry: str) -> bool:
    """Whether `registry` (host[:port]) is one of Google's, which get an access token."""
    if "@" in registry:  # user info: not a plain host, whatever it names
        return False
    try:
        host = urllib.parse.urlsplit(f"//{registry}").hostname or ""
    except ValueError:  # not a host name at all (e.g. an unbalanced IPv6 bracket)
        return False
    return GOOGLE_REGISTRY_HOST.fullmatch(host) is not None


def google_access_token() -> str:
    """An access token from Application Default Credentials (what Artifact Registry and gcr.io accept)."""
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as exc:
        raise OSError(
            f"no Google credentials for the registry (gcloud auth application-default login): {exc}"
        ) from None
    return credentials.token


def pinned_image(image: str, timeout: float = 30) -> str:
    """The image by digest: unchanged if pinned, else the tag resolved with the registry's v2 API.

    Workers restarted hours apart must run the same code, and a tag can move in between. The digest
    is the registry's Docker-Content-Digest answer to HEAD /v2/<repository>/manifests/<tag>.
    """
    if DIGEST.search(image):
        return image
    registry, repository, tag = split_image(image)
    scheme = "http" if registry.split(":")[0] in ("localhost", "127.0.0.1") else "https"
    request = urllib.request.Request(
        f"{scheme}://{registry}/v2/{repository}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    try:
        if is_google_registry(registry):
            token = base64.b64encode(f"oauth2accesstoken:{google_access_token()}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            digest = response.headers.get("Docker-Content-Digest", "")
    except urllib.error.HTTPError as exc:
        raise UnresolvedImage(f"the registry answered HTTP {exc.code} for tag {tag}") from None
    except OSError as exc:  # unreachable registry, timeout, no credentials
        raise UnresolvedImage(f"can't resolve the tag ({exc})") from None
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise UnresolvedImage(f"the registry gave no digest for tag {tag}")
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{name}@{digest}"
