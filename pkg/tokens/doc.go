// Package tokens keeps the API tokens that operators create for people and
// programs (POST /v1/tokens): each has a name and a role, viewer or admin
// (httpx.Role). Only a token's SHA-256 is stored, in the JetStream KV bucket
// devstatus_tokens (key: the hex hash), so every instance on the same NATS
// sees the same tokens. [Store] is the httpx.Authorizer of the admin and
// read routes: it knows the bootstrap --admin-token (role admin) and reads
// the bucket on every other request, so a deleted token is refused from the
// moment DELETE answers, on every instance (a KV get by key is one round trip
// to the bucket's stream; no cache to invalidate).
//
// It must not know about devices: device and gateway tokens live in
// pkg/registry.
package tokens
