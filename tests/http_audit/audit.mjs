// Usage: node audit.mjs URL. Prints one line per audit that is not "ok", then a summary line;
// exits non-zero if any MUST audit fails.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
const counts = { ok: 0, warn: 0, error: 0 };
let mustFailures = 0;
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  const result = await audit.fn();
  counts[result.status] += 1;
  if (result.status !== 'ok') {
    if (audit.name.startsWith('MUST')) mustFailures += 1;
    console.log(`${result.status} ${audit.id} ${audit.name}: ${result.reason}`);
  }
}
console.log(JSON.stringify({ ...counts, mustFailures }));
process.exit(mustFailures ? 1 : 0);
