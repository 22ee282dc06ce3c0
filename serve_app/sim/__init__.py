"""Workloads, traffic simulation, reports and policy replay: a client of the platform, never imported by the router."""
