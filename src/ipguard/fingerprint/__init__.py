"""The fingerprint: its record and file format, signatures, the ways of choosing points
(methods/) and the surrogates they train."""
