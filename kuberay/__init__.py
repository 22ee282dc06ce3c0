"""KubeRay manifests for hybrid-llm and the generator that keeps serveConfigV2 equal to serve_config.yaml."""
