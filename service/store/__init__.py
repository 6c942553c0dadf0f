"""Redis only: key layout, Lua scripts, the profile store adapter."""
