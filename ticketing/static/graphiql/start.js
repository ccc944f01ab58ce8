// Starts GraphiQL with its explorer plugin. A file rather than an inline script, so that the
// page's Content-Security-Policy can refuse every inline script.
"use strict";

// This page is served at the API's own URL; subscriptions use the same URL over WebSocket.
const url = window.location.href.split(/[?#]/)[0];
const fetcher = GraphiQL.createFetcher({
  url,
  subscriptionUrl: url.replace(/^http/, "ws"),
});

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher,
    plugins: [GraphiQLPluginExplorer.explorerPlugin()],
    defaultEditorToolsVisibility: true,
    isHeadersEditorEnabled: true,
    inputValueDeprecation: true,
  }),
);
