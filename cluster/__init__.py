"""Cluster tooling for hybrid-llm on EKS: the eksctl config, deploy/teardown scripts and the verify command."""
