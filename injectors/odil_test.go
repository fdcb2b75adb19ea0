package injectors

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/sim"
	"github.com/authproxy/authproxy/tokencache"
)

func TestODILConfigErrors(t *testing.T) {
	env := Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: http.DefaultClient}
	_, err := NewODIL("odil", ODILConfig{
		BaseURL: "http://odil.example.com", Username: secretValue("u"),
		SAS:      SASConfig{KeyName: secretValue("k"), Key: secretValue("key")},
		External: &ODILEntity{OwnerUserID: "u1", DimensionMake: "bad\nvalue"},
	}, env)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	for _, want := range []string{
		"base_url: must be https",
		"password: a secret needs exactly one",
		"external.owner_company_id: required by the external interface",
		"external.dimension_make: contains characters not allowed",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	_, err = NewODIL("odil", ODILConfig{SessionURL: "https://odil.example.com/s", Username: secretValue("u"), Password: secretValue("p"),
		SAS: SASConfig{KeyName: secretValue("k"), Key: secretValue("key")}}, env)
	if err == nil || !strings.Contains(err.Error(), "sas.resource_uri: required") {
		t.Errorf("session_url without base_url or resource_uri: %v", err)
	}
}

func TestODILBadSASKeyIsRejectedWithoutLeaking(t *testing.T) {
	srv := httptest.NewTLSServer(&sim.ODIL{KeyName: "k", Key: "the-right-key", APICode: "TR:SB:OneDealer:OD", Username: "u", Password: "p"})
	defer srv.Close()
	o, err := NewODIL("odil", ODILConfig{BaseURL: srv.URL, Username: secretValue("u"), Password: secretValue("p"),
		SAS: SASConfig{KeyName: secretValue("k"), Key: secretValue("a-wrong-key")}},
		Env{Cache: tokencache.New(tokencache.Options{}), HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	err = o.Inject(newRequest(t, "https://odil.example.com/api/x", nil))
	if !errors.Is(err, ErrCredentialRejected) || !strings.Contains(err.Error(), "401 Unauthorized: uri:TR:ErrorCodes:Common:InvalidToken") {
		t.Errorf("got %v", err)
	}
	if strings.Contains(err.Error(), "a-wrong-key") || strings.Contains(err.Error(), "SharedAccessSignature") {
		t.Errorf("the error shows the key or the SAS token: %v", err)
	}
}
