"""The Anthropic stand-in lives in serve_app.sim.standin (make serve runs it in offline mode); tests import it here."""

from serve_app.sim.standin import AnthropicStandIn, RecordedRequest, _Handler, main
from serve_app.sim.standin_replies import SIGNATURE, THINKING, prompt_tokens

__all__ = ["SIGNATURE", "THINKING", "AnthropicStandIn", "RecordedRequest", "_Handler", "main", "prompt_tokens"]

if __name__ == "__main__":
    main()
