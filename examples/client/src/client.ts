import { ApolloClient, HttpLink, InMemoryCache } from "@apollo/client";

import introspection from "./gql/possible-types";

/** An Apollo Client for one viewer (a bearer token, or none for anonymous reads). */
export function makeClient(url: string, token?: string): ApolloClient {
  return new ApolloClient({
    link: new HttpLink({
      uri: url,
      fetch,
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    }),
    // Mutations answer with unions whose error members implement `Error`: Apollo can only
    // match `... on Error { message }` against them when it knows the possible types.
    cache: new InMemoryCache({ possibleTypes: introspection.possibleTypes }),
  });
}
