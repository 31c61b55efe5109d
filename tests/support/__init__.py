"""Code the tests share: throw-away workspaces, servers and clusters, small fixtures."""
