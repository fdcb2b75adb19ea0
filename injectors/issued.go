package injectors

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/authproxy/authproxy/config"
)

// Tokens that someone else issues and rotates (a Kubernetes projected
// service-account token, a SPIFFE JWT-SVID), which an injector presents
// to its issuer in place of a secret of its own: each is read from its
// file before each request that sends it, never kept, and, when it is a
// JWT, refused once its own exp has passed (its issuer did not renew
// it: sending it would only earn a refusal). A reload does not watch
// them: they change every hour or so, and are read when used.

const (
	idTokenType    = "urn:ietf:params:oauth:token-type:id_token"
	maxIssuedToken = 64 << 10
)

// issuedFile is the file of an issued token's source ("" when unset),
// adding an error when it is given otherwise than as a file.
func issuedFile(src config.SecretSource, key string, add func(path, format string, args ...any)) string {
	switch {
	case !src.IsSet():
		return ""
	case src.File == "" || src.Value != nil || src.Env != "":
		add(key, "give file: only: a token the platform issues and rotates is read from its file before each request (a value or variable would go stale)")
		return ""
	}
	return src.File
}

// PerUseKeys are the injector keys whose files hold issued tokens: read
// at each use, so neither watched nor part of a block's fingerprint.
var PerUseKeys = []string{"client_assertion", "subject_token", "actor_token"}

// readIssued reads the token in file, for the request field what; a JWT
// (when mustJWT, or when it looks like one) must not have expired.
func (o *OAuth2) readIssued(file, what string, mustJWT bool) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("%w: injector %q: %s: %v", ErrCredentialUnavailable, o.name, what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIssuedToken+1))
	if err != nil {
		return "", fmt.Errorf("%w: injector %q: %s: reading %s: %v", ErrCredentialUnavailable, o.name, what, file, err)
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case len(b) > maxIssuedToken:
		return "", fmt.Errorf("%w: injector %q: %s: %s is over %d bytes: not a token", ErrCredentialUnavailable, o.name, what, file, maxIssuedToken)
	case tok == "":
		return "", fmt.Errorf("%w: injector %q: %s: %s is empty (has its issuer written it yet?)", ErrCredentialUnavailable, o.name, what, file)
	}
	exp, expErr := jwtExpiry(tok) // unverified: the issuer that takes the token verifies it
	switch {
	case mustJWT && strings.Count(tok, ".") != 2:
		return "", fmt.Errorf("%w: injector %q: %s: %s does not hold a JWT", ErrCredentialUnavailable, o.name, what, file)
	case expErr == nil && !o.now().Before(exp):
		return "", fmt.Errorf("%w: injector %q: %s: the JWT in %s expired at %s: whoever issues it (the kubelet, SPIRE) has not renewed it",
			ErrCredentialUnavailable, o.name, what, file, exp.UTC().Format(time.RFC3339))
	}
	return tok, nil
}
