"""The lessons' source: writes the numbered notebooks (cells only, no outputs).

Edit the lessons here, then rebuild them and refresh their outputs:

    .venv/bin/python notebooks/_build.py      # rewrite the .ipynb files (outputs cleared)
    make notebooks                            # execute them in place (commits real outputs)

Writing notebooks from this file keeps diffs readable and cell ids, tags and metadata
consistent. See docs/notebooks.md.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

A_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"

PARAMETERS = 'backend = "embedded"  # or "kubernetes": a cluster with Istio (see README)'


def md(text: str) -> tuple[str, str, tuple[str, ...]]:
    return ("markdown", textwrap.dedent(text).strip("\n"), ())


def code(text: str, *tags: str) -> tuple[str, str, tuple[str, ...]]:
    return ("code", textwrap.dedent(text).strip("\n"), tags)


def setup(stage: str, intro: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """The *Before you begin* block every lesson opens with."""
    return [
        md(f"""
            ## Before you begin

            {intro}

            The next cell picks the backend (papermill can set it); the one after connects
            and brings the lab to stage `{stage}`, changing only what differs, so this lesson
            runs on its own or after the previous ones.
            """),
        code(PARAMETERS, "parameters"),
        code(f"""
            import meshlab
            from meshlab import lesson
            from meshlab.capture import side_by_side

            mesh = meshlab.connect(backend)
            lesson.prepare(mesh, "{stage}")
            """),
    ]


# ---------------------------------------------------------------------------------------

DIAGRAM = r"""
```
 namespace istio-meshlab                        (labelled istio-injection=enabled in 02)
 ┌──────────────────────────────────┐          ┌──────────────────────────────────┐
 │ pod service-a                    │          │ pod service-b-v1                 │
 │ ┌─────────────┐  ┌─────────────┐ │   GET    │ ┌─────────────┐  ┌─────────────┐ │
 │ │ app  :8080  │─▶│ istio-proxy │─┼─/hello──▶┼─│ istio-proxy │─▶│ app  :8080  │ │
 │ └─────────────┘  └─────────────┘ │          │ └─────────────┘  └─────────────┘ │
 └──────────────────────────────────┘          └──────────────────────────────────┘
                                                                 ▲
 namespace legacy (never injected)                               │ plain HTTP
 ┌──────────────────────────────────┐                            │
 │ pod legacy-client (curl, no      │────────────────────────────┘
 │ sidecar: outside the mesh)       │
 └──────────────────────────────────┘
```
"""

L00 = [
    md("""
        # 00 · Welcome to Istio MeshLab

        This lab teaches how Istio secures service-to-service traffic with **mutual TLS**
        (mTLS) by letting you do it and look at the result: HTTP codes, the bytes on the
        wire, certificates, and the Envoy configuration inside the sidecars.

        **What you will see in this notebook:** the lab's three workloads, a check of your
        environment, and the mesh starting.
        """),
    ("markdown", "## The lab\n" + DIAGRAM.rstrip("\n") + "\n" + textwrap.dedent("""
        - **service-a** — `GET /call-b` makes its app call `http://service-b-v1:8080/hello`
          and report what came back.
        - **service-b-v1** — `GET /hello` answers, and says who called: the caller identity
          its sidecar passed on in the `X-Forwarded-Client-Cert` (XFCC) header.
        - **legacy-client** — a curl pod with no sidecar, standing for everything outside
          the mesh (like `sleep.legacy` in istio.io's mTLS tasks).

        The sidecars (`istio-proxy`) are real Envoy proxies, configured the way istiod
        configures them: listeners `virtualInbound` and `virtualOutbound`, clusters named
        `outbound|8080||service-b-v1.istio-meshlab.svc.cluster.local`, certificates from SDS
        secrets `default` and `ROOTCA`. Workloads get SPIFFE certificates from the mesh CA,
        and every lesson applies the same YAML files (`deployments/`) you would give
        `kubectl` on a cluster with Istio.
        """).rstrip("\n"), ()),
    md("""
        ## The lessons

        | | Lesson | You will see |
        |---|---|---|
        | 01 | Services without a mesh | plain HTTP, readable on the wire |
        | 02 | Sidecars and auto mTLS | injection waits for a restart; then mTLS with no policy at all |
        | 03 | STRICT PeerAuthentication | plaintext clients reset (curl exit 56); the caller's identity |
        | 04 | DestinationRule | what the client side decides; the `DISABLE` + STRICT 503 trap |
        | 05 | Identity and certificates | SPIFFE certificates; what TLS 1.2 shows and TLS 1.3 hides |
        | 06 | Playground | controls for every knob, and what each combination does |
        | 07 | Clean up | the lab torn down |

        Each lesson is shaped like a task page on istio.io: *Before you begin*, numbered
        steps with the `kubectl` command you would run on a cluster, and a last cell of
        checks that fails if the mesh misbehaved. Run the cells in order (Shift+Enter). Any
        lesson can run on its own: it first brings the lab to the state it needs.
        """),
    md("""
        ## Step 1: check the environment

        Python, the Envoy binary that runs as each sidecar, and the libraries the lessons
        use. `tshark` is optional: it opens the captures you can export as pcap files.
        """),
    code("""
        from meshlab import lesson

        report = lesson.check_environment()
        report
        """),
    md("""
        ## Step 2: start the mesh

        `meshlab.connect()` starts the embedded mesh: a small daemon that plays the
        Kubernetes API server, the kubelet and istiod. It stores what you apply, runs pods as
        processes on addresses of their own (127.x.y.z), issues certificates, turns
        Istio policies into Envoy configuration and pushes it to the sidecars. Its state
        lives in one folder (`$MESHLAB_HOME`, by default `.meshlab/` beside the notebooks).
        It stops when the last notebook kernel using it exits, or with `mesh.down()`
        (lesson 07), or `meshlab down` in a terminal.

        With `backend = "kubernetes"` the same calls drive your current `kubectl` context.
        """),
    code(PARAMETERS, "parameters"),
    code("""
        import meshlab

        mesh = meshlab.connect(backend)
        lesson.state(mesh)
        """),
    md("""
        The lab is running and, on a fresh start, empty: lesson 01 deploys the workloads.
        The `meshlab` command mirrors what the notebooks do, with kubectl's habits:
        `meshlab apply -f deployments/service-a.yaml`, `meshlab get pa -n istio-meshlab`,
        `meshlab call --from service-a http://service-b-v1:8080/hello -n istio-meshlab`.

        ## Checks
        """),
    code("""
        assert report.ok, report
        assert mesh.status().running
        lesson.passed("00", f"environment ok; {mesh.backend} mesh running")
        """),
]

# ---------------------------------------------------------------------------------------

L01 = [
    md("""
        # 01 · Services without a mesh

        **What you will see:** service-a and service-b-v1 running with no sidecars.
        service-a calls service-b-v1, and a capture at service-b-v1's pod shows the whole
        exchange as readable HTTP: what anyone on the network path can read today. This is
        the *before* picture for every later lesson.
        """),
    *setup("empty", "This lesson starts from an empty lab: if an earlier lesson created the "
                    "namespaces, they are deleted."),
    md("""
        ## Step 1: create the namespace, without the injection label

        On a cluster: `kubectl create namespace istio-meshlab`. (The repository's
        `deployments/namespace.yaml` carries the injection label; lesson 02 applies it.)
        """),
    code('''
        print(mesh.apply("""
        apiVersion: v1
        kind: Namespace
        metadata:
          name: istio-meshlab
        """))
        '''),
    md("""
        ## Step 2: deploy the workloads

        Each file holds a ServiceAccount, a Deployment and a Service; `legacy-client.yaml`
        also creates its own namespace, `legacy`. On a cluster:
        `kubectl apply -f deployments/service-a.yaml -f deployments/service-b-v1.yaml -f deployments/legacy-client.yaml`.
        """),
    code("""
        for file in ["service-a.yaml", "service-b-v1.yaml", "legacy-client.yaml"]:
            print(mesh.apply(f"../deployments/{file}"))
        """),
    md("""
        Like `kubectl get pods -n istio-meshlab` and `-n legacy` (the workload name stands in
        for the pod's random suffix). `READY 1/1`: one container per pod, no sidecar.
        """),
    code("lesson.pods(mesh)"),
    md("""
        ## Step 3: service-a calls service-b-v1

        On a cluster: `kubectl exec deploy/service-a -n istio-meshlab -- curl -s localhost:8080/call-b`.
        """),
    code("""
        reply = lesson.call_b_from_a(mesh)
        lesson.show(reply)
        """),
    md("""
        It works, and service-b-v1 reports `"caller": null` and no `xfcc`: it has no idea
        who called. The request went from service-a's app straight to service-b-v1's pod
        address, as plain HTTP over TCP.

        ## Step 4: look at the wire

        `mesh.capture(...)` records the bytes that cross service-b-v1's pod boundary on port
        8080, like `tcpdump -i eth0 port 8080` inside the pod's network namespace (on a
        cluster: `kubectl debug` with a tcpdump image). Highlighted bytes are the HTTP
        request and status lines and headers.
        """),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as plain:
            lesson.call_b_from_a(mesh)
        plain
        """),
    code("print(plain.explain_tls())"),
    md("""
        Method, path, headers and the JSON answer are all readable. `plain.to_pcap("plain.pcap")`
        writes the capture for Wireshark or `tshark -r plain.pcap`.

        ## Step 5: the legacy client gets in too

        On a cluster: `kubectl exec -n legacy deploy/legacy-client -- curl -s http://service-b-v1.istio-meshlab:8080/hello`.
        From another namespace, the client uses the service's namespaced name.
        """),
    code("""
        legacy = lesson.call_b_from_legacy(mesh)
        lesson.show(legacy)
        """),
    md("""
        Without a mesh any pod can call any service, nothing is encrypted, and nobody proves
        who they are. Lesson 02 adds the sidecars.

        ## Checks
        """),
    code("""
        assert lesson.sidecars(mesh) == {"service-a": False, "service-b-v1": False}
        assert reply.status == 200 and lesson.caller(reply) is None
        assert plain.readable_http and not plain.tls
        assert "GET /hello HTTP/1.1" in plain.http_request_lines
        assert legacy.status == 200 and lesson.caller(legacy) is None
        lesson.passed("01", "no sidecars", "service-a -> service-b-v1 200, caller unknown",
                      f"wire at service-b-v1: {plain.verdict}")
        """),
    md("""
        ## Cleanup

        Nothing to undo: lesson 02 starts from here. (To stop the lab now: `mesh.down()`.)
        """),
]

# ---------------------------------------------------------------------------------------

L02 = [
    md("""
        # 02 · Sidecars and auto mTLS

        **What you will see:** the namespace labelled for sidecar injection, and nothing
        changing until the pods are re-created. After a restart every pod in
        `istio-meshlab` runs an `istio-proxy` sidecar, and service-a → service-b-v1 is
        mutual TLS without a single policy (*auto mTLS*), while the legacy client still gets
        in over plain HTTP (*PERMISSIVE*, Istio's default).
        """),
    *setup("no-sidecars", "This lesson starts where 01 ended: the three workloads deployed, "
                          "no sidecars, no Istio policy."),
    md("""
        ## Step 1: label the namespace

        On a cluster: `kubectl label namespace istio-meshlab istio-injection=enabled`, or
        apply the file:
        """),
    code('lesson.cat("../deployments/namespace.yaml")'),
    code('print(mesh.apply("../deployments/namespace.yaml"))'),
    md("""
        ## Step 2: nothing changed yet

        Istio injects the sidecar with a mutating admission webhook, which runs only when a
        pod is **created**. The running pods keep their spec: still `1/1`, still plain HTTP.
        (A classic surprise: labelling a namespace and expecting mTLS.)
        """),
    code("lesson.pods(mesh)"),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as before:
            lesson.call_b_from_a(mesh)
        print(before.verdict)
        """),
    md("""
        ## Step 3: restart the deployments

        On a cluster: `kubectl rollout restart deployment/service-a deployment/service-b-v1 -n istio-meshlab`.
        """),
    code("""
        print(*mesh.rollout_restart("service-a", "istio-meshlab"))
        print(*mesh.rollout_restart("service-b-v1", "istio-meshlab"))
        lesson.pods(mesh)
        """),
    md("""
        `READY 2/2`: each new pod has a second container, `istio-proxy`. It is Envoy, started
        by pilot-agent, which asked istiod for a certificate naming the pod's service account
        and hands it to Envoy over SDS. All traffic in and out of the pod now passes through
        it: inbound connections land on the `virtualInbound` listener (port 15006), the app's
        outbound requests on `virtualOutbound` (15001). The legacy pod is unchanged.
        """),
    code("lesson.topology(mesh)"),
    md("""
        ## Step 4: call again, and compare the wire
        """),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as after:
            reply = lesson.call_b_from_a(mesh)
        lesson.show(reply)
        """),
    code('side_by_side(before, after, ("before the restart", "after: sidecar to sidecar"))'),
    code("print(after.explain_tls())"),
    md(f"""
        There is no PeerAuthentication and no DestinationRule, yet the connection is TLS and
        service-b-v1 now reports a caller, `{A_ID}`. This is **auto mTLS**
        (`meshConfig.enableAutoMtls`, on by default): istiod tells service-a's sidecar that
        service-b-v1's endpoint has a sidecar too (the pod label
        `security.istio.io/tlsMode: istio`), so it originates Istio mutual TLS with its own
        certificate. The SNI names the destination cluster; the ALPN values `istio-peer-exchange`
        and `istio` mark it as sidecar-to-sidecar mTLS. service-b-v1's sidecar terminates TLS,
        verifies service-a's certificate against the mesh root, and forwards plain HTTP to its
        app on localhost with an `X-Forwarded-Client-Cert` header.

        The client side of this, in service-a's Envoy config (on a cluster:
        `istioctl proxy-config cluster deploy/service-a -n istio-meshlab --fqdn service-b-v1.istio-meshlab.svc.cluster.local -o json`):
        """),
    code('lesson.cluster_tls(mesh, "service-a", "service-b-v1")'),
    md("""
        Two `transport_socket_matches`: endpoints labelled `tlsMode=istio` get the TLS
        socket, any other endpoint gets plain `raw_buffer`. That per-endpoint choice is what
        lets a mesh be adopted one workload at a time.

        ## Step 5: the legacy client still gets in
        """),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as legacy_wire:
            legacy = lesson.call_b_from_legacy(mesh)
        lesson.show(legacy)
        """),
    code('side_by_side(after, legacy_wire, ("service-a → service-b-v1", "legacy-client → service-b-v1"))'),
    md("""
        With no policy, sidecars are **PERMISSIVE**: they accept mutual TLS and plaintext on
        the same port. In service-b-v1's `virtualInbound` listener (on a cluster:
        `istioctl proxy-config listener deploy/service-b-v1 -n istio-meshlab --port 15006 -o json`),
        port 8080 has two filter chains, and the `tls_inspector` listener filter picks one by
        peeking at the first bytes of each connection:
        """),
    code('lesson.inbound_chains(mesh, "service-b-v1")'),
    md("""
        Handy while clients migrate, but anyone without a sidecar still gets in, unencrypted
        and anonymous. Lesson 03 closes that door.

        ## Checks
        """),
    code(f"""
        assert lesson.sidecars(mesh) == {{"service-a": True, "service-b-v1": True}}
        assert before.readable_http
        assert after.tls and not after.readable_http
        assert after.sni == ["outbound_.8080_._.service-b-v1.istio-meshlab.svc.cluster.local"]
        assert lesson.caller(reply) == "{A_ID}"
        assert legacy.status == 200 and lesson.caller(legacy) is None
        assert legacy_wire.readable_http
        lesson.passed("02", "label alone changed nothing; after restart 2/2 pods",
                      f"service-a -> service-b-v1: {{after.verdict}}",
                      "legacy-client still 200 in plaintext (PERMISSIVE)")
        """),
    md("""
        ## Cleanup

        Lesson 03 starts from here. To undo on a cluster: `kubectl label namespace
        istio-meshlab istio-injection-` and restart the deployments again.
        """),
]

# ---------------------------------------------------------------------------------------

L03 = [
    md("""
        # 03 · Require mutual TLS: STRICT PeerAuthentication

        **What you will see:** one PeerAuthentication makes every sidecar in `istio-meshlab`
        accept mutual TLS only. The legacy client is reset (`000`, curl exit code 56) while
        service-a still gets `200`, and service-b-v1 knows exactly who is calling.
        """),
    *setup("sidecars", "This lesson starts where 02 ended: sidecars in istio-meshlab, no "
                       "policy (PERMISSIVE)."),
    md("""
        ## Step 1: who can reach whom

        Every client calls every server, like the loop in istio.io's mTLS tasks:
        `kubectl exec ... -- curl http://service-b-v1.istio-meshlab:8080/healthz -s -o /dev/null -w "%{http_code}"`.
        """),
    code("""
        before = lesson.connectivity_matrix(mesh)
        before
        """),
    md("""
        ## Step 2: apply the policy

        No `selector`, so it covers the whole namespace. On a cluster:
        `kubectl apply -f deployments/istio-mtls-peer-auth.yaml`.
        """),
    code('lesson.cat("../deployments/istio-mtls-peer-auth.yaml")'),
    code('print(mesh.apply("../deployments/istio-mtls-peer-auth.yaml"))'),
    md("""
        istiod rebuilds the `virtualInbound` listener of every sidecar in the namespace;
        `apply` returns once they have loaded it.

        ## Step 3: who can reach whom now
        """),
    code("""
        after = lesson.connectivity_matrix(mesh)
        after
        """),
    md("""
        Both services are now out of reach for the legacy client, and still open to
        service-a, whose sidecar speaks mutual TLS.

        ## Step 4: what the legacy client sees
        """),
    code("""
        legacy = lesson.call_b_from_legacy(mesh)
        lesson.show(legacy)
        """),
    md("""
        No HTTP status at all: curl prints `000` and exits with code 56. The capture shows
        why: the request still crosses the wire in plain text and reaches service-b-v1's
        pod, then the sidecar resets the connection without a byte in reply. STRICT does
        not stop anyone from sending; it stops the server from accepting.
        """),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as refused:
            lesson.call_b_from_legacy(mesh)
        refused
        """),
    md("""
        service-b-v1's listener now has a single filter chain for port 8080: TLS, with a
        client certificate required. A plaintext connection matches no chain, so Envoy
        closes it (stat `no_filter_chain_match`; the access log flag `NR`,
        `filter_chain_not_found`).
        """),
    code('lesson.inbound_chains(mesh, "service-b-v1")'),
    md("""
        ## Step 5: the caller's identity, as service-b-v1 sees it

        The app never handles a certificate: its sidecar did the handshake and passes the
        verified peer identity on in `X-Forwarded-Client-Cert`. istio.io shows the same
        header through httpbin's `/headers` (with the hash redacted, as here).
        """),
    code("""
        reply = lesson.call_b_from_a(mesh)
        lesson.show_xfcc(reply)
        """),
    md("""
        `URI` is service-a's SPIFFE ID: `spiffe://<trust domain>/ns/<namespace>/sa/<service
        account>`. It names the service account, not a pod or an address, so it stays the
        same across restarts and rescheduling. An AuthorizationPolicy can allow or deny
        callers by this identity (`source.principals`).

        ## Checks
        """),
    code("""
        LEGACY, A, B = "legacy-client.legacy", "service-a.istio-meshlab", "service-b-v1.istio-meshlab"
        assert before.status(LEGACY, B) == "200" and before.status(A, B) == "200"
        assert after.status(LEGACY, B) == "000" and after.status(LEGACY, A) == "000"
        assert after.result(LEGACY, B).curl_exit_code == 56
        assert after.status(A, B) == "200"
        assert legacy.error == "connection reset by peer"
        assert refused.http_request_lines == ["GET /hello HTTP/1.1"] and not refused.http_response_lines
        assert lesson.xfcc(reply)["URI"] == "spiffe://cluster.local/ns/istio-meshlab/sa/service-a"
        lesson.passed("03", "STRICT: legacy-client 000 (exit 56)", "service-a -> service-b-v1 200",
                      "XFCC URI " + lesson.xfcc(reply)["URI"])
        """),
    md("""
        ## Cleanup

        Lesson 04 keeps the policy. To undo: `kubectl delete -f deployments/istio-mtls-peer-auth.yaml`
        (`mesh.delete(...)` here), and the sidecars are PERMISSIVE again.
        """),
]

# ---------------------------------------------------------------------------------------

L04 = [
    md("""
        # 04 · The client side: DestinationRule

        **What you will see:** a PeerAuthentication decides what a server's sidecar
        *accepts*; a DestinationRule decides what a client's sidecar *sends*. With auto mTLS
        you rarely need one, so first we switch auto mTLS off to see what the
        `ISTIO_MUTUAL` rule adds. Then the classic trap: a rule with `DISABLE` toward a STRICT
        server, which fails with 503, and how to find out why.
        """),
    *setup("strict", "This lesson starts where 03 ended: sidecars, and STRICT for the "
                     "namespace."),
    md("""
        ## Step 1: what service-a's sidecar does today

        With auto mTLS, its cluster for service-b-v1 chooses TLS per endpoint:
        """),
    code('lesson.cluster_tls(mesh, "service-a", "service-b-v1")'),
    md("""
        ## Step 2: switch auto mTLS off

        A mesh-wide setting: istiod's `meshConfig.enableAutoMtls`. On a cluster it lives in
        the ConfigMap `istio` in `istio-system` (key `mesh`; `kubectl -n istio-system edit
        configmap istio`, or `istioctl install --set meshConfig.enableAutoMtls=false`), and
        it applies to **every** workload of the cluster. This lesson turns it back on in
        step 3; if a cell fails before that, `lesson.configure` turns it back on by itself.
        """),
    code("lesson.configure(mesh, auto_mtls=False)"),
    md("""
        Now call service-b-v1 directly from service-a's pod (on a cluster:
        `kubectl exec deploy/service-a -n istio-meshlab -- curl -s http://service-b-v1:8080/hello`):
        """),
    code("""
        plain = mesh.call("service-a", "http://service-b-v1:8080/hello", "istio-meshlab")
        lesson.show(plain)
        """),
    md("""
        A **503** with Envoy's body, `upstream connect error or disconnect/reset before
        headers. reset reason: connection termination`. It comes from service-a's own
        sidecar, not from service-b-v1: with no auto mTLS and no DestinationRule, the
        sidecar has no TLS settings for service-b-v1 and sends plaintext; service-b-v1 is
        STRICT and resets the connection; the client sidecar reports the reset as a 503.
        """),
    code('lesson.cluster_tls(mesh, "service-a", "service-b-v1")'),
    md("""
        ## Step 3: say it explicitly with a DestinationRule

        `host: service-b-v1` is a short name: it means `service-b-v1.<the rule's
        namespace>.svc.cluster.local`. `ISTIO_MUTUAL` means: present the sidecar's own Istio
        certificate, verify the server against the mesh root and its SPIFFE ID. On a
        cluster: `kubectl apply -f deployments/service-b-v1-destination-rule.yaml`.
        """),
    code('lesson.cat("../deployments/service-b-v1-destination-rule.yaml")'),
    code("""
        print(mesh.apply("../deployments/service-b-v1-destination-rule.yaml"))
        mutual = mesh.call("service-a", "http://service-b-v1:8080/hello", "istio-meshlab")
        lesson.show(mutual)
        """),
    code('lesson.cluster_tls(mesh, "service-a", "service-b-v1")'),
    md("""
        One `transport_socket`, TLS for every endpoint, and the cluster says which rule set
        it. Turn auto mTLS back on: a DestinationRule with TLS settings always wins over auto
        mTLS, so nothing changes for service-b-v1.
        """),
    code("lesson.configure(mesh, auto_mtls=True)"),
    md("""
        ## Step 4: the trap

        Someone wants service-a to reach service-b-v1 "without TLS" and writes a rule with
        `mode: DISABLE`. We delete the first rule before applying it: with two rules for one
        host, the oldest one wins. On a cluster:
        `kubectl delete -f deployments/service-b-v1-destination-rule.yaml` then
        `kubectl apply -f deployments/examples/destination-rule-disable.yaml`.
        """),
    code('lesson.cat("../deployments/examples/destination-rule-disable.yaml")'),
    code("""
        print(mesh.delete("../deployments/service-b-v1-destination-rule.yaml"))
        print(mesh.apply("../deployments/examples/destination-rule-disable.yaml"))
        """),
    code("""
        with mesh.capture("service-b-v1", "istio-meshlab") as trap_wire:
            trap = mesh.call("service-a", "http://service-b-v1:8080/hello", "istio-meshlab")
        lesson.show(trap)
        """),
    md("""
        503 again, with auto mTLS on: a client-side `DISABLE` never relaxes a server's
        STRICT. MeshLab warned when the rule was applied (if the warning above is there),
        but `istioctl analyze` on a real cluster does not flag this combination, so it pays
        to know where to look:

        1. **The body.** `connection termination` means the upstream closed the connection
           before answering: not a TLS error, not a refused connection.
        2. **The client's cluster.** No TLS, and the rule that caused it:
        """),
    code('lesson.cluster_tls(mesh, "service-a", "service-b-v1")'),
    md("""
        3. **The server's listener.** Only a TLS filter chain (STRICT):
        """),
    code('lesson.inbound_chains(mesh, "service-b-v1")'),
    md("""
        4. **The wire.** service-a's sidecar sent the request in plain text, and
           service-b-v1's sidecar reset it unanswered:
        """),
    code("trap_wire"),
    md("""
        5. **All of it at once.** `mesh.describe(...)` (`meshlab describe` in a terminal) reads
           the same objects istiod reads and explains the call from both ends, much as
           `istioctl x describe pod` does on a cluster:
        """),
    code("""
        print(mesh.describe("service-a", "http://service-b-v1:8080/hello", "istio-meshlab"))
        """),
    md("""
        ## Step 5: fix it

        Remove the `DISABLE` rule and put the `ISTIO_MUTUAL` one back (deleting both would
        also work: auto mTLS would pick mTLS).
        """),
    code("""
        print(mesh.delete("../deployments/examples/destination-rule-disable.yaml"))
        print(mesh.apply("../deployments/service-b-v1-destination-rule.yaml"))
        fixed = mesh.call("service-a", "http://service-b-v1:8080/hello", "istio-meshlab")
        print(lesson.curl_line(fixed))
        """),
    md("## Checks"),
    code(f"""
        ENVOY_503 = ("upstream connect error or disconnect/reset before headers. "
                     "reset reason: connection termination")
        assert plain.status == 503 and plain.body == ENVOY_503
        assert mutual.status == 200 and lesson.caller(mutual) == "{A_ID}"
        assert trap.status == 503 and trap.body == ENVOY_503
        assert trap_wire.http_request_lines and not trap_wire.http_response_lines
        assert fixed.status == 200
        assert lesson.mesh_settings(mesh)["auto_mtls"] is True
        lesson.passed("04", "auto mTLS off: 503 until the ISTIO_MUTUAL rule",
                      "DR DISABLE + STRICT: 503 connection termination", "fixed: 200")
        """),
    md("""
        ## Cleanup

        Auto mTLS is on again (step 3; the checks above prove it). Lesson 05 keeps STRICT
        and the `ISTIO_MUTUAL` rule. To undo both:
        `kubectl delete -f deployments/service-b-v1-destination-rule.yaml -f deployments/istio-mtls-peer-auth.yaml`.
        """),
]

# ---------------------------------------------------------------------------------------

L05 = [
    md("""
        # 05 · Identity and certificates

        **What you will see:** the X.509 certificate each sidecar presents and the SPIFFE ID
        inside it; how service-b-v1's XFCC header points at service-a's exact certificate;
        what a capture reveals under TLS 1.2 (both identities, in clear) and under TLS 1.3
        (only the SNI); and what happens to certificates when pods come and go.
        """),
    *setup("strict-dr", "This lesson starts where 04 ended: sidecars, STRICT, and the "
                        "ISTIO_MUTUAL DestinationRule."),
    md("""
        ## Step 1: service-b-v1's certificate

        On a cluster: `istioctl proxy-config secret deploy/service-b-v1 -n istio-meshlab -o json`
        shows the `default` secret (base64 PEM), and `openssl x509 -noout -text` decodes it.
        """),
    code("""
        cert_b = mesh.certificate("service-b-v1", "istio-meshlab")
        lesson.certificate_card(cert_b)
        """),
    md("""
        The subject is empty: the identity is the URI SAN,
        `spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1`, built from the trust
        domain, the namespace and the **service account**. The issuer is the mesh CA
        (istiod's, `O=cluster.local`). The certificate is short-lived, and good for both
        roles a sidecar plays: server (`serverAuth`, inbound) and client (`clientAuth`,
        outbound). Clients check it against the root in the `ROOTCA` secret and against
        the SPIFFE ID they expect for the service.

        ## Step 2: service-a's certificate, and XFCC's `Hash`
        """),
    code("""
        cert_a = mesh.certificate("service-a", "istio-meshlab")
        reply = lesson.call_b_from_a(mesh)
        print(cert_a.spiffe_id)
        print("XFCC Hash == SHA-256 of service-a's certificate:",
              lesson.xfcc(reply)["Hash"] == cert_a.fingerprint_sha256)
        """),
    md("""
        The `Hash` field that service-b-v1 received is the SHA-256 of the DER certificate
        service-a's sidecar presented in the handshake: the server can tell exactly which
        certificate was used, not only which identity.

        ## Step 3: what the wire reveals, TLS 1.2 against TLS 1.3

        Istio's sidecars offer TLS 1.2 and 1.3 and settle on 1.3. The lab can cap its
        client sidecars at 1.2 (Envoy's own default for upstream TLS, and still common
        outside meshes) so you can compare: `compare_tls_versions` captures service-a's call
        once capped at 1.2, once at 1.3. Each change reconfigures the clusters, so every
        capture starts with a fresh handshake. Istio itself has no setting to cap the
        version: on a cluster you get the TLS 1.3 capture, and a line on why.
        """),
    code("""
        wire = lesson.compare_tls_versions(mesh)
        wire
        """),
    code('print(wire.explain("1.2"))'),
    code('print(wire.explain("1.3"))'),
    md("""
        Both versions keep the HTTP requests private. TLS 1.2 sends the Certificate messages
        in clear, so a passive observer learns **who talks to whom** (both SPIFFE IDs); TLS
        1.3 encrypts everything after ServerHello, leaving only the SNI. To refuse TLS 1.2
        between workloads on a cluster, set `meshConfig.meshMTLS.minProtocolVersion: TLSV1_3`.

        ## Step 4: certificates come and go, identities stay

        A new pod gets a new key pair and a new certificate for the same SPIFFE ID. On a
        cluster: `kubectl rollout restart deployment/service-a -n istio-meshlab`.
        """),
    code("""
        old = mesh.certificate("service-a", "istio-meshlab")
        print(*mesh.rollout_restart("service-a", "istio-meshlab"))
        new = mesh.certificate("service-a", "istio-meshlab")
        print("same SPIFFE ID:  ", new.spiffe_id == old.spiffe_id)
        print("new certificate: ", new.fingerprint_sha256 != old.fingerprint_sha256)
        """),
    md("""
        Running pods do not wait for a restart either: pilot-agent requests a fresh
        certificate at about half its lifetime and pushes it to Envoy over SDS; Envoy swaps
        the `default` secret without dropping connections. To watch it happen, restart the
        lab with short-lived certificates: `meshlab down`, then `meshlab up --cert-ttl 30s`.

        ## Checks
        """),
    code(f"""
        B_ID = "spiffe://cluster.local/ns/istio-meshlab/sa/service-b-v1"
        assert cert_b.spiffe_id == B_ID and cert_b.subject == "" and cert_b.issuer == "O=cluster.local"
        assert lesson.xfcc(reply)["Hash"] == cert_a.fingerprint_sha256
        assert wire.tls13.tls_versions == ["TLS 1.3"] and wire.tls13.spiffe_ids == []
        assert not wire.tls13.readable_http
        tls = wire.check_tls12({{B_ID, "{A_ID}"}})  # when the backend could cap it at 1.2
        assert new.spiffe_id == old.spiffe_id and new.fingerprint_sha256 != old.fingerprint_sha256
        lesson.passed("05", "SPIFFE certificates (empty subject, URI SAN)", tls,
                      "restart: new cert, same ID")
        """),
    md("""
        ## Cleanup

        The lab keeps STRICT and the rule; lesson 06 sets its own state.
        """),
]

# ---------------------------------------------------------------------------------------

L06 = [
    md("""
        # 06 · Playground

        **What you will see:** four controls — the namespace's PeerAuthentication mode, the
        TLS mode of a DestinationRule for service-b-v1, auto mTLS, and sidecar injection —
        and after each change: who can reach service-b-v1, what crossed the wire at its pod,
        and which caller identity it saw.
        """),
    *setup("sidecars", "The playground starts from sidecars and no policy; it then owns the "
                       "lab's Istio policies until you run another lesson."),
    md("""
        ## The controls

        Each change writes the objects you would `kubectl apply`: a PeerAuthentication named
        `default` in `istio-meshlab` and a DestinationRule named `service-b-v1`; "none"
        deletes it. Injection relabels the namespace and restarts both deployments (about a
        second). Then both clients call `http://service-b-v1.istio-meshlab:8080/hello`.
        """),
    code("""
        from meshlab.playground import Playground

        playground = Playground(mesh)
        playground
        """),
    md("""
        ## Predict, then try

        | PeerAuthentication | DestinationRule | auto mTLS | injection |
        |---|---|---|---|
        | STRICT | none | on | on |
        | STRICT | DISABLE | on | on |
        | STRICT | none | off | on |
        | STRICT | ISTIO_MUTUAL | off | on |
        | DISABLE | none | on | on |
        | DISABLE | ISTIO_MUTUAL | on | on |
        | STRICT | none | on | off |

        <details><summary>What happens (open after predicting)</summary>

        1. service-a 200 over mTLS; legacy-client `000` (exit 56): lesson 03.
        2. service-a 503, `connection termination`: the trap of lesson 04.
        3. service-a 503: without auto mTLS nothing tells its sidecar to use TLS.
        4. service-a 200 again: the rule asks for Istio mTLS explicitly.
        5. Both 200 in plain text: service-b-v1's sidecar accepts plaintext only, and auto
           mTLS sees that and sends plaintext.
        6. service-a 503: its sidecar insists on TLS, and service-b-v1's listener answers the
           ClientHello with a plaintext HTTP 400, a TLS error on the client side.
        7. Both 200 in plain text: with no sidecars nothing enforces the policy. Policies
           act only where a sidecar runs.

        </details>

        ## Checks: drive the controls from code

        Errors inside widget callbacks do not stop a notebook, so these cells set the
        controls the way a click does and check what the playground recorded.
        """),
    code("""
        playground.set(peer_authentication="STRICT", destination_rule="DISABLE")
        playground
        """),
    code("""
        A, LEGACY = "service-a.istio-meshlab", "legacy-client.legacy"
        assert playground.error is None, playground.error
        assert playground.observation.status(A) == "503"
        assert playground.observation.status(LEGACY) == "000"
        """),
    code("""
        playground.destination_rule.value = "none"  # exactly what choosing it in the menu does
        playground
        """),
    code(f"""
        assert playground.error is None, playground.error
        assert playground.observation.status(A) == "200"
        assert playground.observation.identity[A] == "{A_ID}"
        assert playground.observation.status(LEGACY) == "000"
        assert playground.updates == 3
        """),
    code("""
        playground.peer_authentication.value = "none"
        assert playground.error is None, playground.error
        assert playground.observation.status(LEGACY) == "200"
        assert playground.observation.wire[LEGACY] == "plaintext HTTP"
        lesson.passed("06", "STRICT + DR DISABLE: 503/000", "STRICT alone: 200/000",
                      "no policy: 200/200")
        """),
    md("""
        ## Cleanup

        The playground's objects stay until another lesson prepares the lab (each one
        deletes policies it does not expect).
        """),
]

# ---------------------------------------------------------------------------------------

L07 = [
    md("""
        # 07 · Clean up

        **What you will see:** the lab torn down: the workloads deleted, then every process
        the embedded mesh started stopped. Nothing keeps running afterwards.
        """),
    md("""
        ## Step 1: delete what the lessons created

        On a cluster: `kubectl delete namespace istio-meshlab legacy` (and any policy you
        applied elsewhere, such as `deployments/examples/mesh-strict.yaml` in `istio-system`).
        """),
    code(PARAMETERS, "parameters"),
    code("""
        import meshlab
        from meshlab import lesson

        mesh = meshlab.connect(backend)
        lesson.prepare(mesh, "empty")
        """),
    md("""
        ## Step 2: stop the mesh

        `mesh.down()` (or `meshlab down` in a terminal) stops the sidecars, the apps and the
        daemon, and forgets the lab's state. With the kubernetes backend it only closes the
        connection; delete the cluster itself with your usual tool (`kind delete cluster`).
        """),
    code("""
        mesh.down()
        mesh.status().running
        """),
    md("""
        ## What next

        - `deployments/examples/` holds more policies to try with any lesson: mesh-wide
          STRICT from the root namespace, a workload-level `DISABLE` that overrides the
          namespace, and `portLevelMtls` (keyed by the container port).
        - Every lesson runs against a real cluster with `backend = "kubernetes"`.
        - Run all lessons headless with `make tutorial`.

        ## Checks
        """),
    code("""
        assert not mesh.status().running
        lesson.passed("07", "lab deleted and mesh stopped")
        """),
]

LESSONS = {
    "00-welcome": L00,
    "01-services-without-a-mesh": L01,
    "02-sidecars-and-auto-mtls": L02,
    "03-strict-peer-authentication": L03,
    "04-destination-rule": L04,
    "05-identity-and-certificates": L05,
    "06-playground": L06,
    "07-cleanup": L07,
}


def build(name: str, cells: list[tuple[str, str, tuple[str, ...]]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
    }
    number = name[:2]
    for index, (kind, source, tags) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"l{number}-{index:02d}"
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    return nb


def main(argv: list[str]) -> int:
    only = set(argv)
    for name, cells in LESSONS.items():
        if only and name[:2] not in only and name not in only:
            continue
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name, cells), path)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
