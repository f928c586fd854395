"""Turn-taking parts: frame classification (VAD), the turn detector, the end-of-turn
policy, final pitch and backchannels."""
