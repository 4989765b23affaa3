"""The operator's commands: `node init`, `node run`, `node doctor`, register, stake, claim."""
