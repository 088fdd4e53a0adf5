// Command testenv runs a local Kubernetes control plane from upstream binaries: etcd, kube-apiserver (with
// RBAC and service-account token issuing) and kube-controller-manager (garbage collection, namespace
// deletion, service accounts). Each start generates fresh certificates and keys; nothing is shared with
// another cluster. Standard library only, so that it builds in seconds.
//
//	testenv up   --bin-dir DIR --state-dir DIR   start in the background (harmless when already running)
//	testenv down --state-dir DIR                 stop and remove the state
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The three processes, in start order; down stops them in reverse.
var components = []string{"etcd", "kube-apiserver", "kube-controller-manager"}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	binDir := fs.String("bin-dir", "", "directory holding etcd, kube-apiserver and kube-controller-manager")
	stateDir := fs.String("state-dir", "target/testenv", "where certificates, data, logs and the kubeconfig go")
	timeout := fs.Duration("timeout", 90*time.Second, "how long to wait for the API server to become ready")
	_ = fs.Parse(os.Args[2:])

	var err error
	switch os.Args[1] {
	case "up":
		if *binDir == "" {
			fatal(errors.New("--bin-dir is required"))
		}
		err = up(*binDir, *stateDir, *timeout)
	case "down":
		err = down(*stateDir)
	default:
		usage()
	}
	if err != nil {
		fatal(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: testenv up --bin-dir DIR [--state-dir DIR] | testenv down [--state-dir DIR]")
	os.Exit(2)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "testenv:", err)
	os.Exit(1)
}

func up(binDir, stateDir string, timeout time.Duration) error {
	started := time.Now()
	if running(stateDir) {
		if err := waitReady(stateDir, 10*time.Second); err == nil {
			fmt.Printf("testenv: already running; kubeconfig %s\n", filepath.Join(stateDir, "kubeconfig"))
			return nil
		}
	}
	// A previous run that died half-way leaves processes or state behind: start from nothing.
	if err := down(stateDir); err != nil {
		return err
	}
	for _, c := range components {
		if _, err := os.Stat(filepath.Join(binDir, c)); err != nil {
			return fmt.Errorf("missing %s in %s (build it with `make testenv-bin`): %w", c, binDir, err)
		}
	}
	pki := filepath.Join(stateDir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kcmPort := ports[0], ports[1], ports[2], ports[3]
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writePKI(pki, stateDir, server); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stateDir, "server"), []byte(server+"\n"), 0o644); err != nil {
		return err
	}

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	if err := start(stateDir, binDir, "etcd",
		"--data-dir="+filepath.Join(stateDir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeer),
		fmt.Sprintf("--initial-cluster=default=http://127.0.0.1:%d", etcdPeer),
		// A throwaway test cluster: durability is not worth an fsync per write.
		"--unsafe-no-fsync", "--log-level=warn",
	); err != nil {
		return err
	}
	if err := start(stateDir, binDir, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+filepath.Join(pki, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(pki, "apiserver.key"),
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--authorization-mode=RBAC",
		// The issuer is the API server itself, so its OIDC discovery document and JWKS are served at
		// <server>/.well-known/openid-configuration and <server>/openid/v1/jwks for workload identity.
		"--service-account-issuer="+server,
		"--service-account-key-file="+filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(pki, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		// No kubelets, no kube-proxy: nothing would use the "kubernetes" Service endpoints, and the reconciler
		// refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	); err != nil {
		return err
	}
	if err := waitReady(stateDir, timeout); err != nil {
		return fmt.Errorf("%w (see %s)", err, filepath.Join(stateDir, "kube-apiserver.log"))
	}
	// Let anyone fetch the issuer's discovery document and keys, as managed clusters do, so that an Entra
	// emulator can validate projected service-account tokens.
	if err := apply(stateDir, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", `{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
		"metadata": {"name": "testenv:service-account-issuer-discovery"},
		"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
		"subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]}`); err != nil {
		return err
	}
	if err := start(stateDir, binDir, "kube-controller-manager",
		"--kubeconfig="+filepath.Join(stateDir, "controller-manager.kubeconfig"),
		"--authentication-kubeconfig="+filepath.Join(stateDir, "controller-manager.kubeconfig"),
		"--authorization-kubeconfig="+filepath.Join(stateDir, "controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort),
		"--service-account-private-key-file="+filepath.Join(pki, "sa.key"),
		"--root-ca-file="+filepath.Join(pki, "ca.crt"),
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--v=1",
	); err != nil {
		return err
	}
	// The controller manager's service-account controller creates every namespace's "default" account: seeing it
	// proves the controller manager is up and talking to the API server.
	if err := waitFor(stateDir, "/api/v1/namespaces/default/serviceaccounts/default", 60*time.Second); err != nil {
		return fmt.Errorf("kube-controller-manager: %w (see %s)", err, filepath.Join(stateDir, "kube-controller-manager.log"))
	}
	version, _ := get(stateDir, "/version")
	fmt.Printf("testenv: up in %.1fs: %s %s\n  kubeconfig: %s\n", time.Since(started).Seconds(), server,
		gitVersion(version), filepath.Join(stateDir, "kubeconfig"))
	return nil
}

func down(stateDir string) error {
	for i := len(components) - 1; i >= 0; i-- {
		pidFile := filepath.Join(stateDir, components[i]+".pid")
		data, err := os.ReadFile(pidFile)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			continue
		}
		// Each component leads its own process group (Setsid), so the group signal reaches it alone.
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	return os.RemoveAll(stateDir)
}

func running(stateDir string) bool {
	for _, c := range components {
		data, err := os.ReadFile(filepath.Join(stateDir, c+".pid"))
		if err != nil {
			return false
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || !alive(pid) {
			return false
		}
	}
	return true
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// A zombie still answers kill(0); it is not alive for our purpose.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// start launches a component detached from this process (own session, output to a log file) and records its pid.
func start(stateDir, binDir, name string, args ...string) error {
	logFile, err := os.Create(filepath.Join(stateDir, name+".log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	// Reap it if it dies while we are still here, so that alive() sees the truth.
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(filepath.Join(stateDir, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

func freePorts(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// adminClient talks to the API server as the admin user of the generated kubeconfig.
func adminClient(stateDir string) (*http.Client, string, error) {
	pki := filepath.Join(stateDir, "pki")
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "admin.crt"), filepath.Join(pki, "admin.key"))
	if err != nil {
		return nil, "", err
	}
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	server, err := os.ReadFile(filepath.Join(stateDir, "server"))
	if err != nil {
		return nil, "", err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
	}}
	return client, strings.TrimSpace(string(server)), nil
}

func get(stateDir, path string) (string, error) {
	client, server, err := adminClient(stateDir)
	if err != nil {
		return "", err
	}
	resp, err := client.Get(server + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, buf.String())
	}
	return buf.String(), nil
}

func apply(stateDir, collection, body string) error {
	client, server, err := adminClient(stateDir)
	if err != nil {
		return err
	}
	resp, err := client.Post(server+collection, "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusConflict {
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		return fmt.Errorf("POST %s: %s: %s", collection, resp.Status, buf.String())
	}
	return nil
}

func waitReady(stateDir string, timeout time.Duration) error {
	return waitFor(stateDir, "/readyz", timeout)
}

// waitFor polls GET path until it answers 200. Only used at start-up, before any watch could be set up.
func waitFor(stateDir, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if _, last = get(stateDir, path); last == nil {
			return nil
		}
		for _, c := range components {
			if data, err := os.ReadFile(filepath.Join(stateDir, c+".pid")); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && !alive(pid) {
					return fmt.Errorf("%s exited (see %s)", c, filepath.Join(stateDir, c+".log"))
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v", path, timeout, last)
}

func gitVersion(versionJSON string) string {
	const key = `"gitVersion": "`
	if i := strings.Index(versionJSON, key); i >= 0 {
		rest := versionJSON[i+len(key):]
		if j := strings.IndexByte(rest, '"'); j >= 0 {
			return rest[:j]
		}
	}
	return "(unknown version)"
}

// writePKI generates the cluster CA, the API server's serving certificate, client certificates for the admin
// and the controller manager, the service-account signing key, and their kubeconfigs.
func writePKI(pki, stateDir, server string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "entra-operator-testenv-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(pki, "ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}

	issue := func(name string, subject pkix.Name, usage x509.ExtKeyUsage, dns []string, ips []net.IP) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: subject,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: dns, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(pki, name+".crt"), "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(filepath.Join(pki, name+".key"), "PRIVATE KEY", keyDER)
	}
	if err := issue("apiserver", pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}); err != nil {
		return err
	}
	if err := issue("admin", pkix.Name{CommonName: "testenv-admin", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return err
	}
	if err := issue("controller-manager", pkix.Name{CommonName: "system:kube-controller-manager"},
		x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return err
	}

	// RS256 is the signing algorithm every OIDC validator supports.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(pki, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(pki, "sa.pub"), "PUBLIC KEY", saPub); err != nil {
		return err
	}

	if err := writeKubeconfig(filepath.Join(stateDir, "kubeconfig"), server, pki, "admin"); err != nil {
		return err
	}
	return writeKubeconfig(filepath.Join(stateDir, "controller-manager.kubeconfig"), server, pki, "controller-manager")
}

func writeKubeconfig(path, server, pki, user string) error {
	b64 := func(name string) (string, error) {
		data, err := os.ReadFile(filepath.Join(pki, name))
		return base64.StdEncoding.EncodeToString(data), err
	}
	ca, err := b64("ca.crt")
	if err != nil {
		return err
	}
	crt, err := b64(user + ".crt")
	if err != nil {
		return err
	}
	key, err := b64(user + ".key")
	if err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: testenv
  context:
    cluster: testenv
    user: %s
    namespace: default
current-context: testenv
`, server, ca, user, crt, key, user)
	return os.WriteFile(path, []byte(config), 0o600)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}
