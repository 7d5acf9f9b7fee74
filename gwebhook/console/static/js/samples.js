// The samples an instance keeps (store_samples), oldest first.
import {api, instances, query} from "./api.js";
import {h, fill, facts, pretty, incidentLink, select} from "./dom.js";

export async function samplesPage(main, {params, signal, navigate}) {
  const known = await instances(signal);
  const keeping = known.filter((i) => i.store_samples);
  const instance = params.get("instance") || (keeping[0] || known[0] || {}).name || "";
  const kept = instance ? await api(`/api/v1/samples${query({instance})}`, {signal}) : [];
  fill(main, 
    h("h1", {tabindex: "-1"}, "Samples"),
    h("div", {class: "toolbar"},
      select("samples-instance", "Instance", known.map((i) => [i.name, i.name + (i.store_samples ? "" : " (keeps none)")]),
             instance, (value) => navigate("samples", {instance: value})),
      instance ? h("a", {href: `#/workbench?instance=${encodeURIComponent(instance)}`}, "Build a mapping from these") : null),
    h("p", {class: "muted"}, `${kept.length} sample${kept.length === 1 ? "" : "s"}, oldest first.`),
    h("div", {id: "samples"}, kept.map((s) => {
      const {headers = {}, ...details} = s.rawJson;
      return h("article", {class: "card sample", "data-id": s.id},
        h("h2", {}, incidentLink(s.id), " ", s.name),
        facts([["Type", s.type], ["Occurred", s.occurred], ["Fields", pretty(s.fields)]]),
        h("details", {open: true}, h("summary", {}, "Details"), h("pre", {}, pretty(details))),
        h("details", {}, h("summary", {}, "Headers"), h("pre", {}, pretty(headers))));
    })));
}
