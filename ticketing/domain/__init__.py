"""The domain core: tables and booking rules, free of GraphQL and HTTP."""
