"""The release HEAD must stay compatible with, recorded by commit: tests/compat builds it from
this repository's history (git archive, then a wheel), with no network.

The baseline is the first release that carries the version contract (README, "Rolling
deploys"). Until that release (0.2.0) is cut, a commit of the contract's own work stands in;
at each release, set this line to the commit of the previous release.
"""

BASELINE_COMMIT = "202c71c38abc95795773e3cbdc120692e3e32ac3"  # the contract (stands in for 0.2.0)
