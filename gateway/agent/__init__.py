"""Agent turns: profile resolution and one OpenAI-compatible chat completion per turn."""
