"""Kubernetes name rules (DNS-1035 / DNS-1123 labels, qualified names) with k8s' own wording."""

from __future__ import annotations

import re

_DNS1035_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
    "start with an alphabetic character, and end with an alphanumeric character"
)
_DNS1123_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_FMT = _DNS1123_FMT + r"(\." + _DNS1123_FMT + ")*"
_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"

_DNS1035 = re.compile(f"^{_DNS1035_FMT}$")
_DNS1123 = re.compile(f"^{_DNS1123_FMT}$")
_DNS1123_SUBDOMAIN = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_QNAME = re.compile(f"^{_QNAME_FMT}$")

LABEL_MAX_LEN = 63


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # k8s' RegexError, spacing and all: "(e.g. 'my-name',  or 'abc-123', regex used ...)".
    text = msg + " (e.g. "
    for i, example in enumerate(examples):
        if i:
            text += " or "
        text += f"'{example}', "
    return text + f"regex used for validation is '{fmt}')"


def _max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def dns1035_label_errors(value: str) -> list[str]:
    """k8s IsDNS1035Label: the reasons `value` is not a DNS-1035 label (empty when it is)."""
    errors = []
    if len(value) > LABEL_MAX_LEN:
        errors.append(_max_len_error(LABEL_MAX_LEN))
    if not _DNS1035.match(value):
        errors.append(_regex_error(_DNS1035_MSG, _DNS1035_FMT, "my-name", "abc-123"))
    return errors


def dns1123_label_errors(value: str) -> list[str]:
    """k8s IsDNS1123Label: the reasons `value` is not an RFC 1123 label."""
    errors = []
    if len(value) > LABEL_MAX_LEN:
        errors.append(_max_len_error(LABEL_MAX_LEN))
    if not _DNS1123.match(value):
        errors.append(_regex_error(_DNS1123_MSG, _DNS1123_FMT, "my-name", "123-abc"))
    return errors


def is_qualified_name(value: str) -> bool:
    """k8s IsQualifiedName: `[prefix/]name`, name <= 63 chars of [-A-Za-z0-9_.], prefix a DNS subdomain."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return False
    name = parts[-1]
    return 0 < len(name) <= LABEL_MAX_LEN and bool(_QNAME.match(name))


def go_list(items: list[str]) -> str:
    """How Go's fmt prints a []string: `[a b]`; Knative puts k8s' reasons in messages this way."""
    return "[" + " ".join(items) + "]"
