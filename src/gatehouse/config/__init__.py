"""Settings of ``gatehouse serve``: one table, read from flags, environment and a file.

Each setting is declared once, in ``gatehouse.config.table.SETTINGS``. Its
config-file key is its name, its flag ``--`` + the name with dashes, its
environment variable ``GATEHOUSE_`` + the name in capitals. Precedence,
highest first: flag, environment, config file (``--config FILE`` or
``GATEHOUSE_CONFIG``), default. ``gatehouse serve --print-config`` prints the
result, secrets masked. docs/configuration.md lists every setting; a test
keeps it in step with the table.

Adding a setting is one entry in ``SETTINGS``::

    Setting("audit_sample_checks", Number(0, 1), 1.0,
            "Fraction of Check decisions written to the audit log (writes always are)."),

gives ``--audit-sample-checks X``, ``GATEHOUSE_AUDIT_SAMPLE_CHECKS`` and the
key ``audit_sample_checks:``, read and checked by the kind, and fills
``ServerConfig.audit_sample_checks`` (add that field with the same default).
Options of an entry:

- the kind (``gatehouse.config.kinds``): ``Text(max_len, pattern, shape)``,
  ``Choice((...))``, ``Integer(low, high)``, ``Number(low, high,
  low_inclusive)``, ``Boolean()`` (flags ``--x`` and ``--no-x``),
  ``FilePath()``, ``Address()`` (HOST:PORT), ``Url(schemes)`` (password
  masked), ``ListOf(kind)`` (YAML list; comma-separated in flags and env);
- ``default=None`` makes it optional (``null``, or an empty flag or env
  value, means none), e.g. ``Setting("tls_cert", FilePath(), None, "...")``;
- ``secret=True``: printed as ``***`` and passed to ``--workers`` children
  by environment only;
- ``field="other_name"`` fills a ``ServerConfig`` field of another name;
  ``field=None`` for a setting only the ``serve`` command reads;
- ``aliases=("--old-flag",)`` keeps an older flag spelling working.

A check across settings (e.g. ``tls_key`` needs ``tls_cert``) is a function
in ``RULES`` returning ``(key, message)`` or None. Then add the row to
docs/configuration.md (the test prints the expected row when it differs).
"""

from gatehouse.config.kinds import (
    Address,
    Boolean,
    Choice,
    FilePath,
    Integer,
    Kind,
    ListOf,
    Number,
    Text,
    Url,
)
from gatehouse.config.resolve import (
    CONFIG_ENV,
    ConfigError,
    Effective,
    add_arguments,
    from_arguments,
    render,
    resolve,
    worker_invocation,
)
from gatehouse.config.setting import Rule, Setting, Source
from gatehouse.config.table import RULES, SETTINGS

__all__ = [
    "CONFIG_ENV",
    "RULES",
    "SETTINGS",
    "Address",
    "Boolean",
    "Choice",
    "ConfigError",
    "Effective",
    "FilePath",
    "Integer",
    "Kind",
    "ListOf",
    "Number",
    "Rule",
    "Setting",
    "Source",
    "Text",
    "Url",
    "add_arguments",
    "from_arguments",
    "render",
    "resolve",
    "worker_invocation",
]
