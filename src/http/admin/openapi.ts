// Builds the OpenAPI 3.1 document from the admin routes' own JSON schemas, so the document cannot drift from them.

export interface RouteDoc {
  method: string | string[];
  url: string;
  schema?: {
    summary?: string;
    description?: string;
    tags?: string[];
    params?: JsonSchema;
    querystring?: JsonSchema;
    body?: JsonSchema;
    response?: Record<string, JsonSchema>;
  };
  /** extra OpenAPI facts fastify does not know: responses that are not JSON, public routes */
  openapi?: { responses?: Record<string, unknown>; public?: boolean };
}

type JsonSchema = Record<string, unknown> & { properties?: Record<string, Record<string, unknown>>; required?: readonly string[]; description?: string };

const STANDARD_ERRORS: Record<string, string> = {
  '400': 'The request is malformed; the message names the parameter and the fix',
  '401': 'No or wrong admin token',
  '404': 'No such message (or the admin API is off)',
  '409': 'The state does not allow it now (a delivery in flight, nothing to redeliver)',
};

/** `shared` are named schemas: a response schema equal to one becomes a $ref to components/schemas. */
export function buildOpenApi(routes: readonly RouteDoc[], info: { title: string; version: string }, shared: Record<string, object> = {}): Record<string, unknown> {
  const named = new Map(Object.entries(shared).map(([name, schema]) => [JSON.stringify(schema), name]));
  const ref = (schema: object) => {
    const name = named.get(JSON.stringify(schema));
    return name ? { $ref: `#/components/schemas/${name}` } : schema;
  };
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of [...routes].sort((a, b) => a.url.localeCompare(b.url))) {
    const path = r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    const methods = (Array.isArray(r.method) ? r.method : [r.method]).map((m) => m.toLowerCase()).filter((m) => m !== 'head');
    for (const method of methods) {
      const s = r.schema ?? {};
      const parameters = [...toParameters('path', s.params), ...toParameters('query', s.querystring)];
      const responses: Record<string, unknown> = {};
      for (const [code, schema] of Object.entries(s.response ?? {})) {
        const { description, ...rest } = schema;
        const isShared = named.has(JSON.stringify(schema));
        responses[code] = {
          description: isShared ? (STANDARD_ERRORS[code] ?? 'Problem') : (description ?? (code.startsWith('2') ? 'OK' : 'Problem')),
          content: { 'application/json': { schema: ref(schema) } },
        };
      }
      Object.assign(responses, r.openapi?.responses ?? {});
      for (const code of ['400', '401', '404']) {
        const description = STANDARD_ERRORS[code];
        if (code === '401' && r.openapi?.public) continue;
        responses[code] ??= { description, content: { 'application/json': { schema: { $ref: '#/components/schemas/Problem' } } } };
      }
      const op: Record<string, unknown> = {
        operationId: operationId(method, path),
        summary: s.summary,
        description: s.description,
        tags: s.tags,
        parameters: parameters.length > 0 ? parameters : undefined,
        requestBody: s.body ? { required: (s.body.required?.length ?? 0) > 0, content: { 'application/json': { schema: s.body } } } : undefined,
        responses,
        security: r.openapi?.public ? [] : undefined,
      };
      (paths[path] ??= {})[method] = stripUndefined(op);
    }
  }
  return {
    openapi: '3.1.0',
    info: { ...info, description: 'mailhook admin API: inspect the spool, replay deliveries, remove messages. Every route needs the admin token as a bearer token.' },
    security: [{ bearerAuth: [] }],
    paths,
    components: {
      securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', description: 'http.admin_token_file or MAILHOOK_ADMIN_TOKEN' } },
      schemas: {
        Problem: {
          type: 'object',
          properties: { error: { type: 'string' }, message: { type: 'string' } },
          required: ['error', 'message'],
        },
        ...shared,
      },
    },
  };
}

function toParameters(where: 'path' | 'query', schema: JsonSchema | undefined): unknown[] {
  if (!schema?.properties) return [];
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties).map(([name, prop]) => {
    const { description, ...rest } = prop;
    return stripUndefined({ name, in: where, required: where === 'path' || required.has(name), description, schema: rest });
  });
}

function operationId(method: string, path: string): string {
  const words = path
    .replace(/^\/api\//, '')
    .split('/')
    .filter(Boolean)
    .map((p) => (p.startsWith('{') ? 'by_' + p.slice(1, -1) : p.replace(/[^A-Za-z0-9]+/g, '_')));
  return [method, ...words].join('_');
}

function stripUndefined<T extends Record<string, unknown>>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
