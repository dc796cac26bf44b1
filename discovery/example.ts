/**
 * The built-in example mesh: what `ward up` runs when no ward.yaml is given, and the reference
 * document for the format. Two nodes; a `web` and an `api` service in namespace `shop`, two
 * replicas each, one replica of each on each node; `api` accepts only GET (and HEAD) from `web`,
 * `web` accepts only the ingress: everything else is denied. Each workload runs `ward echo`, the
 * example app that answers with the caller identity its node proxy gave it; `ward up` fills in
 * `{address}`, `{port}` and `{name}` in a command, and runs `ward` as itself.
 */
export const EXAMPLE_WARD_YAML = `\
apiVersion: ward.dev/v1alpha1
kind: Mesh
trustDomain: cluster.local

nodes:
  - {name: node-a, address: 127.0.10.1, zone: zone-a}
  - {name: node-b, address: 127.0.10.2, zone: zone-b}

workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, node: node-a, address: 127.0.20.1, ports: [8080], labels: {app: web}, command: [ward, echo, --listen, "{address}:{port}", --name, "{name}"]}
  - {name: web-2, namespace: shop, serviceAccount: web, node: node-b, address: 127.0.20.2, ports: [8080], labels: {app: web}, command: [ward, echo, --listen, "{address}:{port}", --name, "{name}"]}
  - {name: api-1, namespace: shop, serviceAccount: api, node: node-a, address: 127.0.30.1, ports: [9090], labels: {app: api}, command: [ward, echo, --listen, "{address}:{port}", --name, "{name}"]}
  - {name: api-2, namespace: shop, serviceAccount: api, node: node-b, address: 127.0.30.2, ports: [9090], labels: {app: api}, command: [ward, echo, --listen, "{address}:{port}", --name, "{name}"]}

services:
  - name: web
    namespace: shop
    ports: [{name: http, port: 80, targetPort: 8080, protocol: http}]
    selector: {app: web}
  - name: api
    namespace: shop
    ports: [{name: http, port: 8080, targetPort: 9090, protocol: http}]
    selector: {app: api}

policies:
  # Any ALLOW that targets a workload means only what some ALLOW matches gets through.
  - apiVersion: security.ward.dev/v1alpha1
    kind: AuthorizationPolicy
    metadata: {name: api-allow-web-get, namespace: shop}
    spec:
      selector: {service: api}
      action: ALLOW
      rules:
        - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/web"]}]
          to: [{methods: [GET, HEAD]}]
  - apiVersion: security.ward.dev/v1alpha1
    kind: AuthorizationPolicy
    metadata: {name: web-allow-ingress, namespace: shop}
    spec:
      selector: {service: web}
      action: ALLOW
      rules:
        - from: [{identities: ["spiffe://cluster.local/ns/ward-system/sa/ward-ingress"]}]

ingress:
  routes:
    - host: shop.localhost
      paths:
        - {path: /, pathType: Prefix, service: web.shop, port: 80}
`;
