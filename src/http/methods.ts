// Which methods each path answers, from the routes as registered: a request with the wrong method is told 405 and the methods to use, not 404.
import type { FastifyReply, FastifyRequest } from 'fastify';

export class RouteMethods {
  private readonly routes: Array<{ pattern: RegExp; methods: string[] }> = [];

  /** A registered route (fastify's onRoute): its url with `:param` and `*` segments, and its method(s). */
  add(url: string, method: string | string[]): void {
    const pattern = new RegExp(`^${url.split(/(:[A-Za-z0-9_]+|\*)/).map((part) => (part === '*' ? '.*' : part.startsWith(':') ? '[^/]+' : escape(part))).join('')}$`);
    this.routes.push({ pattern, methods: Array.isArray(method) ? method : [method] });
  }

  /** The methods some route answers for this path (no query string), sorted; empty when no route has the path. */
  allowed(path: string): string[] {
    const methods = new Set(this.routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods));
    return [...methods].sort();
  }

  /**
   * Answers a request no route took: 405 with Allow when its path exists under another method, else 404 with
   * `notFound`'s message. Bodies are the HTTP listener's `{error, message}`.
   */
  reply(req: FastifyRequest, reply: FastifyReply, notFound: (path: string) => string): FastifyReply {
    const path = req.url.split('?')[0] ?? req.url;
    const allowed = this.allowed(path);
    if (allowed.length === 0) return reply.code(404).send({ error: 'not_found', message: notFound(path) });
    return reply
      .code(405)
      .header('allow', allowed.join(', '))
      .send({ error: 'method_not_allowed', message: `${req.method} is not allowed for ${path}; use ${allowed.length === 1 ? allowed[0] : `one of ${allowed.join(', ')}`}` });
  }
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
