import type { CodegenConfig } from "@graphql-codegen/cli";

// Types and possibleTypes both come from the committed schema, so they can't drift from it.
const config: CodegenConfig = {
  schema: "../../schema.graphql",
  documents: ["src/**/*.ts", "!src/gql/**"],
  ignoreNoDocuments: false,
  generates: {
    "src/gql/": {
      preset: "client",
      presetConfig: { fragmentMasking: false },
      config: {
        // Without this the client preset types DateTime as `unknown`; the API sends ISO 8601 strings.
        scalars: { DateTime: "string" },
        // Apollo Client adds __typename to every selection: type it, to narrow the unions.
        nonOptionalTypename: true,
        enumsAsTypes: true,
        useTypeImports: true,
      },
    },
    // Apollo Client needs the union and interface members (possibleTypes) to match
    // `... on Error` against a NotEnoughTickets result; without them it drops the fragment.
    "src/gql/possible-types.ts": {
      plugins: ["fragment-matcher"],
      config: { apolloClientVersion: 3, useExplicitTyping: true },
    },
  },
};

export default config;
