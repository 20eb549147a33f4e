"""Signature schemes: pure functions of headers, body, secrets and the clock.

Each scheme answers two questions about a delivery: is it authentic
(`verify`), and what are its event id and type (`identify`). It can also sign
a body the way its provider does (`sign`), for `hookledger send` and the
tests. Nothing here does I/O.

- `scheme`: the interface (`Scheme`, `Delivery`, `Verdict`) and shared helpers
- `generic`: `none`, `token`, `hmac-sha256`
- `providers`: Standard Webhooks (and Svix), Stripe, GitHub, Shopify, Slack
- `registry`: `SCHEMES`, every scheme by its configured name
"""
