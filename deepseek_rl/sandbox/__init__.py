"""The code sandbox: untrusted programs (code rewards' completions, tool calls mid-rollout) run isolated, limited
and judged by a process they cannot reach. Used by the code rewards (rewards/coding.py) and by rollouts' tool calls
(rollout/tools.py); see sandbox.py for the modes and docs/rewards.md for the guarantees."""
