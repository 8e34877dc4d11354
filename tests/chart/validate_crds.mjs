// Reads a JSON array of ServiceMonitor and PrometheusRule documents on stdin and validates
// each against the Prometheus Operator schemas; prints one line per document, exits 1 on any
// invalid one.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const kinds = { ServiceMonitor, PrometheusRule };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const doc of JSON.parse(input)) {
  const Kind = kinds[doc.kind];
  if (!Kind) { console.log(`unknown kind ${doc.kind}`); failed++; continue; }
  try {
    new Kind(doc).validate();
    console.log(`valid ${doc.kind} ${doc.metadata.name}`);
  } catch (e) {
    console.log(`INVALID ${doc.kind} ${doc.metadata.name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
