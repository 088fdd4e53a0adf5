package main

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// The generated PKI must be what the API server and its clients accept: a CA, a serving certificate valid
// for the loopback address, and client certificates whose subjects RBAC maps to the right identities.
func TestPKI(t *testing.T) {
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writePKI(pki, dir, "https://127.0.0.1:6443"); err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, filepath.Join(pki, "ca.crt"))
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	server := readCert(t, filepath.Join(pki, "apiserver.crt"))
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("serving certificate does not verify for 127.0.0.1: %v", err)
	}
	if !server.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Fatalf("unexpected IP SANs %v", server.IPAddresses)
	}

	admin := readCert(t, filepath.Join(pki, "admin.crt"))
	if _, err := admin.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("admin certificate: %v", err)
	}
	if len(admin.Subject.Organization) != 1 || admin.Subject.Organization[0] != "system:masters" {
		t.Fatalf("admin must be in system:masters, got %v", admin.Subject.Organization)
	}
	kcm := readCert(t, filepath.Join(pki, "controller-manager.crt"))
	if kcm.Subject.CommonName != "system:kube-controller-manager" {
		t.Fatalf("controller manager identity %q", kcm.Subject.CommonName)
	}

	kubeconfig, err := os.ReadFile(filepath.Join(dir, "kubeconfig"))
	if err != nil || !strings.Contains(string(kubeconfig), "server: https://127.0.0.1:6443") {
		t.Fatalf("kubeconfig: %v\n%s", err, kubeconfig)
	}
	if info, _ := os.Stat(filepath.Join(pki, "sa.key")); info.Mode().Perm() != 0o600 {
		t.Fatalf("the signing key must be private, mode %v", info.Mode())
	}
}

// A second `up` while the control plane runs changes nothing; `down` stops every process and removes the state.
func TestUpTwiceThenDown(t *testing.T) {
	bin := os.Getenv("TESTENV_BIN_DIR")
	if bin == "" {
		t.Skip("TESTENV_BIN_DIR is not set (make test sets it)")
	}
	state := filepath.Join(t.TempDir(), "state")
	if err := up(bin, state, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	server, _ := os.ReadFile(filepath.Join(state, "server"))
	pids := map[string]int{}
	for _, c := range components {
		data, _ := os.ReadFile(filepath.Join(state, c+".pid"))
		pids[c], _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	if err := up(bin, state, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(filepath.Join(state, "server"))
	if string(again) != string(server) {
		t.Fatalf("second up restarted the control plane: %s then %s", server, again)
	}
	if err := down(state); err != nil {
		t.Fatal(err)
	}
	for c, pid := range pids {
		if alive(pid) {
			t.Fatalf("%s (pid %d) still runs after down", c, pid)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state dir still there: %v", err)
	}
}
