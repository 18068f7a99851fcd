"""Scale: local worker processes, Ray, and fleet scans."""
