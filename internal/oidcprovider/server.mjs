// node oidc-provider (panva/node-oidc-provider, the version package.json
// pins) as an RFC 8705 authorization server on loopback, for the tests:
// client credentials with tls_client_auth and self_signed_tls_client_auth,
// access tokens bound to the client certificate (cnf.x5t#S256), as JWTs
// for the resource the request names. The library does the protocol; this
// file is what an operator configures: the TLS server that asks for a
// client certificate, the mTLS hooks (features.mTLS.getCertificate,
// certificateAuthorized, certificateSubjectMatches, which the library asks
// its operator to write), the clients, and the resource server.
//
// node server.mjs CONFIG.json; prints "listening PORT" on stderr once it serves.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const peer = (ctx) => {
  const c = ctx.req.socket.getPeerCertificate?.();
  return c && c.raw ? new X509Certificate(c.raw) : undefined;
};
const server = https.createServer({
  cert: readFileSync(cfg.cert_file),
  key: readFileSync(cfg.key_file),
  ca: readFileSync(cfg.client_ca_file),
  requestCert: true,
  rejectUnauthorized: false, // self_signed_tls_client_auth: the provider decides
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const provider = new Provider(`https://127.0.0.1:${port}`, {
    clients: cfg.clients,
    clientAuthMethods: ['tls_client_auth', 'self_signed_tls_client_auth'],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'as-1', use: 'sig', alg: 'RS256' }] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => cfg.resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (resource !== cfg.resource) throw new Error('unknown resource');
          return { scope: 'read', audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        },
      },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => peer(ctx)?.toString(),
        certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
        certificateSubjectMatches: (ctx, property, expected) => {
          const cert = peer(ctx);
          switch (property) {
            case 'tls_client_auth_subject_dn':
              return cert?.subject === expected;
            case 'tls_client_auth_san_uri':
              return (cert?.subjectAltName || '').split(', ').includes(`URI:${expected}`);
            default:
              return false;
          }
        },
      },
    },
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.error(`listening ${port}`); // on stderr, which the tests follow
});
