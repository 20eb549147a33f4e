// The providers' own JavaScript libraries, for tests/test_provider_libraries.py.
// Reads one JSON request on stdin, writes one JSON answer on stdout:
//   {"op": "shopify-validate", "secret", "headers": [[name, value], ...], "body_base64"}
//   {"op": "github-verify", "secret", "headers": [...], "body_base64"}
//   {"op": "github-sign", "secret", "body_base64"}
import '@shopify/shopify-api/adapters/web-api';
import {shopifyApi, ApiVersion, LogSeverity} from '@shopify/shopify-api';
import {sign, verify} from '@octokit/webhooks-methods';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
const body = Buffer.from(request.body_base64 || '', 'base64');
const header = (name) => {
  const hit = (request.headers || []).find(([n]) => n.toLowerCase() === name.toLowerCase());
  return hit ? hit[1] : undefined;
};

let answer;
if (request.op === 'shopify-validate') {
  const shopify = shopifyApi({
    apiKey: 'hookledger-test',
    apiSecretKey: request.secret,
    apiVersion: ApiVersion.October25,
    hostName: 'localhost',
    isEmbeddedApp: false,
    logger: {level: LogSeverity.Error, log: async () => {}},
  });
  const rawRequest = new Request('http://localhost/webhooks', {
    method: 'POST',
    headers: request.headers,
    body,
  });
  answer = await shopify.webhooks.validate({rawBody: body.toString('utf8'), rawRequest});
} else if (request.op === 'github-verify') {
  const signature = header('x-hub-signature-256');
  answer = {
    valid: await verify(request.secret, body.toString('utf8'), signature),
    id: header('x-github-delivery') ?? null,
    name: header('x-github-event') ?? null,
  };
} else if (request.op === 'github-sign') {
  answer = {signature: await sign(request.secret, body.toString('utf8'))};
} else {
  answer = {error: `unknown op ${request.op}`};
}
process.stdout.write(JSON.stringify(answer));
