"""Cross-domain filters for evaluation: which tracks may be queries and which candidates.

A filter is one or more clauses ``domain:expression`` separated by ``;`` (all must hold):

    release_genres:Rock & ~Pop
    tags_yt_title:live | "cover version" ; dvi:True

An expression combines labels with ``&`` (and), ``|`` (or), ``~`` (not) and parentheses; ``~``
binds tighter than ``&``, which binds tighter than ``|``. A label is a bare word (anything but
spaces, quotes and ``()&|~;``, so ``hip-hop`` and ``R&B``-free names work as they are) or a
quoted string (``"Hip Hop"``, ``'Drum n Bass'``, with ``\\"`` for a quote inside). The parser is
a small recursive-descent parser with limits on length and nesting: nothing is ever evaluated
as code.

Labels of a track in a domain come from its metadata field of the same name: a dict of dicts
gives the keys of the inner dicts, a list gives its elements (the second item of a pair), a
scalar gives itself; everything is compared as text (so ``dvi:True``).
"""

import difflib
import re

import numpy as np

from lib.errors import UsageError

# the metadata fields that hold labels: the DVI2 JSON files' and DiVers's (the published DVI2)
DOMAINS = (
    "release_styles",
    "release_genres",
    "tags_yt_title",
    "tags_yt_description",
    "dvi",
    "tags_yt_tags",
    "cues_yt_title",
    "cues_yt_description",
    "cues_yt_tags",
    "country",
    "formats",
    "labels",
    "yt_categories",
    "yt_channel",
    "track_writer_names",
    "release_artist_names",
)
MAX_LENGTH = 10_000
MAX_DEPTH = 50
_TOKEN = re.compile(
    r"""\s*(?:(?P<op>[&|~()])|"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<word>[^\s&|~()'";]+))"""
)


class FilterError(UsageError, ValueError):
    """A filter that cannot be parsed or names something that does not exist."""


###################################################################################################
# Parsing
###################################################################################################


def tokenize(text):
    """'a & ~"b c"' -> [('label', 'a'), ('op', '&'), ('op', '~'), ('label', 'b c')]."""
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterError(f"unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        pos = match.end()
        if match.group("op"):
            tokens.append(("op", match.group("op")))
        elif match.group("word") is not None:
            tokens.append(("label", match.group("word")))
        else:
            quoted = match.group("dq") if match.group("dq") is not None else match.group("sq")
            tokens.append(("label", re.sub(r"\\(.)", r"\1", quoted)))
    return tokens


class _Parser:
    def __init__(self, tokens):
        self.tokens, self.pos = tokens, 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self):
        token = self.peek()
        self.pos += 1
        return token

    def expression(self, depth):
        if depth > MAX_DEPTH:
            raise FilterError(f"expression nested deeper than {MAX_DEPTH} levels")
        terms = [self.conjunction(depth)]
        while self.peek() == ("op", "|"):
            self.take()
            terms.append(self.conjunction(depth))
        return terms[0] if len(terms) == 1 else ("or", *terms)

    def conjunction(self, depth):
        terms = [self.negation(depth)]
        while self.peek() == ("op", "&"):
            self.take()
            terms.append(self.negation(depth))
        return terms[0] if len(terms) == 1 else ("and", *terms)

    def negation(self, depth):
        nots = 0
        while self.peek() == ("op", "~"):
            self.take()
            nots += 1
            if nots > MAX_DEPTH:
                raise FilterError(f"more than {MAX_DEPTH} '~' in a row")
        node = self.atom(depth)
        return ("not", node) if nots % 2 else node

    def atom(self, depth):
        kind, value = self.take()
        if kind == "label":
            return ("label", value)
        if (kind, value) == ("op", "("):
            node = self.expression(depth + 1)
            if self.take() != ("op", ")"):
                raise FilterError("missing ')'")
            return node
        found = "the end of the expression" if kind is None else repr(value)
        raise FilterError(f"expected a label, '~' or '(' but found {found}")


def parse_expression(text):
    """Expression text -> tree of ('label', x), ('not', a), ('and', a, b, ...), ('or', a, ...).

    And/or chains are flat, so a tree is only as deep as the parentheses (at most MAX_DEPTH)."""
    if not isinstance(text, str):
        raise FilterError(f"a filter expression must be text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"expression longer than {MAX_LENGTH} characters")
    tokens = tokenize(text)
    if not tokens:
        raise FilterError("empty expression")
    parser = _Parser(tokens)
    tree = parser.expression(0)
    if parser.pos != len(tokens):
        raise FilterError(f"unexpected {parser.peek()[1]!r} after a complete expression")
    return tree


def parse_filter(text):
    """'dom1:expr1 ; dom2:expr2' -> [(dom1, tree1), (dom2, tree2)]. Semicolons inside quotes
    belong to the label."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError("empty filter; expected domain:expression")
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter longer than {MAX_LENGTH} characters")
    clauses = []
    for part in _split_clauses(text):
        domain, sep, expression = part.partition(":")
        domain = domain.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", domain):
            raise FilterError(
                f"{part.strip()!r} is not of the form domain:expression "
                f"(domains: {', '.join(DOMAINS)})"
            )
        try:
            clauses.append((domain, parse_expression(expression)))
        except FilterError as err:
            raise FilterError(f"in {part.strip()!r}: {err}") from None
    return clauses


def _split_clauses(text):
    parts, current, quote, escaped = [], [], None, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quote:
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ";":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


###################################################################################################
# Labels and evaluation
###################################################################################################


def labels_of(value):
    """The set of text labels of one metadata value (see the module docstring)."""
    if value is None:
        return set()
    if isinstance(value, dict):
        out = set()
        for inner in value.values():
            if isinstance(inner, dict):
                out |= {str(k) for k in inner if k is not None}
            elif inner is not None:
                out.add(str(inner))
        return out
    if isinstance(value, (list, tuple, set)):
        out = set()
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                item = item[1]
            if item is not None:
                out.add(str(item))
        return out
    return {str(value)}


class DomainIndex:
    """Label sets of every track of ``keys`` for every domain present in ``info``."""

    def __init__(self, info, keys, source="the metadata"):
        self.keys = list(keys)
        self.source = source
        self.labels = {}
        present = {f for k in self.keys for f in info[k] if f in DOMAINS}
        for domain in present:
            self.labels[domain] = [labels_of(info[k].get(domain)) for k in self.keys]

    def known_labels(self, domain):
        return sorted(set().union(*self.labels[domain])) if self.labels[domain] else []

    def select(self, text):
        """Bool array (len(keys),): the tracks satisfying every clause of the filter ``text``."""
        keep = np.ones(len(self.keys), dtype=bool)
        for domain, tree in parse_filter(text):
            keep &= self._evaluate_clause(domain, tree)
        return keep

    def _evaluate_clause(self, domain, tree):
        if domain not in self.labels:
            available = ", ".join(sorted(self.labels)) or "none"
            what = "unknown domain" if domain not in DOMAINS else "no values for domain"
            raise FilterError(
                f"{what} {domain!r} in {self.source} (domains with values: {available}; "
                f"filterable domains: {', '.join(DOMAINS)})"
            )
        known = set(self.known_labels(domain))
        for label in _labels_in(tree):
            if label not in known:
                close = difflib.get_close_matches(label, sorted(known), n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                shown = ", ".join(map(repr, sorted(known)[:20]))
                more = f" ... ({len(known)} in all)" if len(known) > 20 else ""
                raise FilterError(
                    f"unknown label {label!r} in domain {domain!r} of {self.source}{hint} "
                    f"(labels: {shown}{more})"
                )
        return _evaluate(tree, self.labels[domain])


def _labels_in(tree):
    stack, out = [tree], []
    while stack:
        node = stack.pop()
        if node[0] == "label":
            out.append(node[1])
        else:
            stack.extend(node[1:])
    return out


def _evaluate(tree, label_sets):
    kind = tree[0]
    if kind == "label":
        return np.fromiter((tree[1] in s for s in label_sets), dtype=bool, count=len(label_sets))
    if kind == "not":
        return ~_evaluate(tree[1], label_sets)
    out = _evaluate(tree[1], label_sets)
    for child in tree[2:]:
        out = (
            out & _evaluate(child, label_sets)
            if kind == "and"
            else out | _evaluate(child, label_sets)
        )
    return out
