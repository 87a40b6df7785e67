"""Header and path work the router does: *_headers_to_add/remove at each level, path rewrites,
redirect Location."""

from __future__ import annotations

from config import model
from sidecar.codec.events import Headers
from sidecar.http.message import Request


def apply_mutations(headers: Headers, mutations: model.HeaderMutations) -> Headers:
    """Remove, then add, as Envoy's HeaderParser does for one level."""
    if mutations.remove:
        removed = mutations.remove
        headers = [h for h in headers if h[0] not in removed]
    for option in mutations.add:
        if not option.value and not option.keep_empty_value:
            continue   # Envoy drops headers whose value is empty unless keep_empty_value
        name, action = option.name, option.action
        if action == "APPEND_IF_EXISTS_OR_ADD":
            headers.append((name, option.value))
            continue
        exists = any(h[0] == name for h in headers)
        if action == "ADD_IF_ABSENT":
            if not exists:
                headers.append((name, option.value))
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD":
            headers = [h for h in headers if h[0] != name]
            headers.append((name, option.value))
        elif exists:   # OVERWRITE_IF_EXISTS
            headers = [h for h in headers if h[0] != name]
            headers.append((name, option.value))
    return headers


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def split_authority(authority: str) -> tuple[str, str | None]:
    """("host", "port") of a Host header value, IPv6 literals included."""
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1:]
        return authority[: end + 1], rest[1:] if rest.startswith(":") else None
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, port
    return authority, None


def redirect_location(request: Request, action: model.RedirectAction, route: model.Route) -> str:
    scheme = action.scheme or request.scheme
    host, port = split_authority(request.authority)
    if action.host:
        host, host_port = split_authority(action.host)
        port = host_port
    if action.port:
        port = str(action.port)
    elif scheme != request.scheme and port == _DEFAULT_PORTS.get(request.scheme):
        port = None   # a scheme change drops the old scheme's default port (Envoy)
    if port is not None and port == _DEFAULT_PORTS.get(scheme):
        port = None
    path, _, query = request.path.partition("?")
    if action.path is not None:
        path, has_query, new_query = action.path.partition("?")
        if has_query:
            query = new_query   # a query in path_redirect replaces the request's, and stays
    elif action.prefix_rewrite is not None:
        match = route.match
        if match.kind in ("prefix", "path", "path_separated_prefix"):
            path = action.prefix_rewrite + path[len(match.value):]
        else:
            path = action.prefix_rewrite
    elif action.regex_rewrite is not None:
        path = action.regex_rewrite.pattern.sub(action.regex_rewrite.substitution, path)
    if action.strip_query and not (action.path and "?" in action.path):
        query = ""
    location = f"{scheme}://{host}"
    if port:
        location += f":{port}"
    location += path
    if query:
        location += "?" + query
    return location


def rewrite_path(path: str, match: model.RouteMatch, action: model.RouteAction) -> str:
    """prefix_rewrite swaps the matched prefix (or path); regex_rewrite rewrites the path, keeping the query."""
    if action.regex_rewrite is not None:
        bare, sep, query = path.partition("?")
        rewritten = action.regex_rewrite.pattern.sub(action.regex_rewrite.substitution, bare)
        return rewritten + sep + query
    prefix = action.prefix_rewrite or ""
    if match.kind in ("prefix", "path", "path_separated_prefix"):
        return prefix + path[len(match.value):]
    # Envoy: with a regex match, prefix_rewrite replaces the whole path (query kept).
    bare, sep, query = path.partition("?")
    return prefix + sep + query
