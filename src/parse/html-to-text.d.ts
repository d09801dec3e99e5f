// Types for the one function mailhook uses from html-to-text (the package ships none).
declare module 'html-to-text' {
  export function htmlToText(html: string, options?: { limits?: { maxDepth?: number } }): string;
}
