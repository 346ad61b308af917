package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The console's cookies. Both are HttpOnly and SameSite=Strict, and Secure over HTTPS.
const (
	// csrfCookie holds a random value the anti-forgery token of every form is derived
	// from: a POST must carry both.
	csrfCookie = "idem_csrf"
	// sessionCookie proves a login with --token, for as long as the process runs.
	sessionCookie = "idem_session"
	// csrfField is the form field of the anti-forgery token.
	csrfField = "csrf"
)

// contentSecurityPolicy allows the console's own stylesheet and script and nothing
// else: no inline script or style, no frames, no form posting elsewhere.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// securityHeaders sets the headers every response of the console carries.
func (c *console) securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

type csrfKey struct{}

// csrfToken returns the anti-forgery token the forms of the page being rendered
// carry.
func csrfToken(ctx context.Context) string {
	s, _ := ctx.Value(csrfKey{}).(string)
	return s
}

// authConfigured reports whether the console requires credentials.
func (c *console) authConfigured() bool { return c.f.token != "" || c.f.basicAuth != "" }

// public reports whether r may be served without credentials: the stylesheet and the
// script, and the login page.
func public(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/static/") || r.URL.Path == "/login"
}

// guard checks who asks, and, for a POST, that it comes from the console's own page:
//
//   - without credentials configured, only requests from a loopback address that
//     name a loopback host (DNS rebinding) are served;
//   - with credentials, every request but the login page and static files must carry
//     them: a bearer token, basic authentication or the login cookie;
//   - a POST must pass the cross-origin checks (Sec-Fetch-Site, Origin, Referer) and
//     carry the anti-forgery token of its form; in read-only mode, no POST but the
//     login's is served.
func (c *console) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.authConfigured() {
			if !loopbackAddr(r.RemoteAddr) {
				c.plainError(w, http.StatusForbidden, "this console has no credentials configured, so it serves loopback clients only; start it with --token or --basic-auth to serve others")
				return
			}
			if host := hostOnly(r.Host); !loopbackHost(host) {
				c.plainError(w, http.StatusForbidden, fmt.Sprintf("the Host %q is not a loopback name: without credentials configured, the console answers requests for localhost, 127.0.0.1 or [::1] only", inert(r.Host)))
				return
			}
		} else if !public(r) && !c.authenticated(r) {
			c.challenge(w, r)
			return
		}
		token, ok := c.csrfCookie(w, r)
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			if err := c.checkPost(r, token, ok); err != nil {
				c.plainError(w, http.StatusForbidden, "refused: "+err.Error())
				return
			}
			if c.f.readOnly && r.URL.Path != "/login" && r.URL.Path != "/logout" {
				c.plainError(w, http.StatusForbidden, "refused: the console is read-only")
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), csrfKey{}, c.sign("csrf", token))))
	})
}

// loopbackAddr reports whether the remote address of a request is loopback.
func loopbackAddr(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hostOnly returns the host of a Host header, without its port.
func hostOnly(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return host
	}
	return hostport
}

// equalSecret compares a and b in constant time, whatever their lengths.
func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// sign returns the HMAC of what, for purpose, under the process's secret.
func (c *console) sign(purpose, what string) string {
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte(purpose + "\x00" + what))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// authenticated reports whether r carries the console's credentials. Every check
// runs in constant time, and all of them run.
func (c *console) authenticated(r *http.Request) bool {
	ok := 0
	if c.f.token != "" {
		if bearer, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); found && equalSecret(bearer, c.f.token) {
			ok |= 1
		}
		if ck, err := r.Cookie(sessionCookie); err == nil && equalSecret(ck.Value, c.sign("session", c.f.token)) {
			ok |= 1
		}
	}
	if c.f.basicAuth != "" {
		if user, password, found := r.BasicAuth(); found {
			u, p := equalSecret(user, c.f.basicUser), equalSecret(password, c.f.basicPassword)
			if u && p {
				ok |= 1
			}
		}
	}
	return ok == 1
}

// challenge answers a request without credentials: basic authentication's challenge,
// or, for a browser's page when the console takes a token, the login page.
func (c *console) challenge(w http.ResponseWriter, r *http.Request) {
	if c.f.basicAuth != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="idem console", charset="UTF-8"`)
	}
	if c.f.token != "" && c.f.basicAuth == "" && r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html") {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	msg := "credentials required"
	if c.f.token != "" {
		msg += ": send Authorization: Bearer <token>, or log in at /login"
	}
	c.plainError(w, http.StatusUnauthorized, msg)
}

// csrfCookie returns the value of the anti-forgery cookie, setting a new one when the
// request has none. ok reports whether the request carried it.
func (c *console) csrfCookie(w http.ResponseWriter, r *http.Request) (value string, ok bool) {
	if ck, err := r.Cookie(csrfCookie); err == nil {
		if b, err := base64.RawURLEncoding.DecodeString(ck.Value); err == nil && len(b) == 32 {
			return ck.Value, true
		}
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand never fails
	value = base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, c.cookie(r, csrfCookie, value))
	return value, false
}

func (c *console) cookie(r *http.Request, name, value string) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

// checkPost refuses a state-changing request that does not come from the console's
// own pages: one a browser marks cross-origin (Sec-Fetch-Site), one whose Origin or
// Referer names another host than the request's, and one whose form lacks the
// anti-forgery token of the request's cookie. Hosts are compared without their scheme,
// as http.CrossOriginProtection compares them: behind a proxy that terminates TLS, the
// browser's origin is https while the console serves http.
func (c *console) checkPost(r *http.Request, cookie string, hadCookie bool) error {
	if err := c.cop.Check(r); err != nil {
		return fmt.Errorf("a cross-origin request (%v)", err)
	}
	switch origin := r.Header.Get("Origin"); {
	case origin == "null":
		// Sent by browsers under Referrer-Policy: no-referrer; their Sec-Fetch-Site
		// says where the request comes from.
		if r.Header.Get("Sec-Fetch-Site") != "same-origin" {
			return errors.New("a request of an opaque origin")
		}
	case origin != "" && !sameHost(origin, r.Host):
		return fmt.Errorf("a request from another origin, %q", inert(shorten(origin, 100)))
	}
	if ref := r.Header.Get("Referer"); ref != "" && !sameHost(ref, r.Host) {
		return fmt.Errorf("a request from another page, %q", inert(shorten(ref, 100)))
	}
	if !hadCookie {
		return errors.New("no anti-forgery cookie: reload the page and try again")
	}
	if err := r.ParseForm(); err != nil {
		return fmt.Errorf("unreadable form: %v", err)
	}
	if !equalSecret(r.PostForm.Get(csrfField), c.sign("csrf", cookie)) {
		return errors.New("the form's anti-forgery token is missing or wrong: reload the page and try again")
	}
	return nil
}

// sameHost reports whether the URL raw, an Origin or a Referer, is an http or https
// URL of host, the request's Host header.
func sameHost(raw, host string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && strings.EqualFold(u.Host, host)
}

// plainError answers with a short text message.
func (c *console) plainError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// login is the login page of a console that takes a token: GET shows its form, POST
// checks the token and sets the login cookie.
func (c *console) login(w http.ResponseWriter, r *http.Request) {
	if c.f.token == "" {
		http.NotFound(w, r)
		return
	}
	next := r.FormValue("next")
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		next = "/"
	}
	data := map[string]any{"Next": next}
	if r.Method == http.MethodPost {
		if equalSecret(r.PostForm.Get("token"), c.f.token) {
			http.SetCookie(w, c.cookie(r, sessionCookie, c.sign("session", c.f.token)))
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		}
		data["Failed"] = true
		c.render(w, r, http.StatusUnauthorized, "login", "Log in", data)
		return
	}
	c.render(w, r, http.StatusOK, "login", "Log in", data)
}

// logout clears the login cookie.
func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	ck := c.cookie(r, sessionCookie, "")
	ck.MaxAge = -1
	http.SetCookie(w, ck)
	target := "/"
	if c.f.token != "" {
		target = "/login"
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}
