"""The GraphQL layer: translates between the schema and the domain core, nothing more."""
